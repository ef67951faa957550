//! Softmax cross-entropy over logits `[n, classes]`, averaged over the batch, with optional label
//! smoothing as PyTorch's `CrossEntropyLoss(label_smoothing=eps)`: the target puts `1 - eps + eps/C` on
//! the label and `eps/C` on every other class.

use ndarray::{Array2, ArrayView2};

use crate::error::{Error, Result};
use crate::tensor::contiguous;

/// The loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SoftmaxCrossEntropy {
    /// Label smoothing `eps` in `[0, 1]`.
    pub label_smoothing: f32,
}

/// What [`SoftmaxCrossEntropy::backward`] needs.
#[derive(Debug, Clone)]
pub struct CrossEntropyCache {
    /// Softmax probabilities `[n, classes]`.
    pub probabilities: Array2<f32>,
    labels: Vec<usize>,
}

impl SoftmaxCrossEntropy {
    /// With label smoothing `eps`; an error unless `0 <= eps <= 1`.
    pub fn new(label_smoothing: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::config(
                "cross_entropy",
                format!("label smoothing must be in [0, 1], found {label_smoothing}"),
            ));
        }
        Ok(SoftmaxCrossEntropy { label_smoothing })
    }

    /// The batch-mean loss, and the cache for backward.
    pub fn forward(&self, logits: ArrayView2<f32>, labels: &[usize]) -> Result<(f32, CrossEntropyCache)> {
        let (n, classes) = (logits.shape()[0], logits.shape()[1]);
        if n == 0 || classes == 0 {
            return Err(Error::shape(
                "cross_entropy logits",
                "[n >= 1, classes >= 1]",
                format!("{:?}", logits.shape()),
            ));
        }
        check_labels("cross_entropy", labels, n, classes)?;
        let z = contiguous(&logits);
        let mut probabilities = Array2::zeros([n, classes]);
        let p = probabilities.as_slice_mut().expect("fresh arrays are contiguous");
        let loss = forward_rows(&z, classes, classes, labels, self.label_smoothing, p);
        Ok((
            loss as f32,
            CrossEntropyCache {
                probabilities,
                labels: labels.to_vec(),
            },
        ))
    }

    /// `d loss / d logits = (softmax - target) / n`.
    pub fn backward(&self, cache: &CrossEntropyCache) -> Array2<f32> {
        let (n, classes) = cache.probabilities.dim();
        let mut grad = Array2::zeros([n, classes]);
        let probabilities = cache.probabilities.as_slice().expect("built contiguous");
        let g = grad.as_slice_mut().expect("fresh arrays are contiguous");
        backward_rows(
            probabilities,
            &cache.labels,
            classes,
            self.label_smoothing,
            g,
            classes,
            MeanOver { weight: 1.0, images: n },
        );
        grad
    }
}

/// How many of the rows of `classes` logits (row `i` at `logits[i * stride..]`, one per label) have their
/// largest logit at their label (the first of equal largest ones, as `argmax` picks).
pub(crate) fn correct_rows(logits: &[f32], stride: usize, classes: usize, labels: &[usize]) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(i, &label)| {
            let row = &logits[i * stride..][..classes];
            let best = (0..classes).fold(0, |b, c| if row[c] > row[b] { c } else { b });
            best == label
        })
        .count()
}

/// The batch-mean loss of `n` rows of `classes` logits (row `i` at `logits[i * stride..]`), writing the
/// softmax probabilities densely into `probabilities`. Labels must already be checked to be in range.
pub(crate) fn forward_rows(
    logits: &[f32],
    stride: usize,
    classes: usize,
    labels: &[usize],
    label_smoothing: f32,
    probabilities: &mut [f32],
) -> f64 {
    struct Kernel<'a>(&'a [f32], usize, usize, &'a [usize], f32, &'a mut [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = f64;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
            let Kernel(logits, stride, classes, labels, smoothing, probabilities) = self;
            forward_rows_body(logits, stride, classes, labels, smoothing, probabilities)
        }
    }
    crate::kernels::vectorize(Kernel(logits, stride, classes, labels, label_smoothing, probabilities))
}

/// What a loss's gradient is scaled by: `weight / images`, the gradient of `weight` times the loss's mean
/// over `images` images (the batch, or the global batch when it is split across ranks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MeanOver {
    pub weight: f32,
    pub images: usize,
}

/// Writes `weight · (softmax - target) / images` ([`MeanOver`]) for rows of `classes` probabilities into
/// `grad` (row stride `stride`).
pub(crate) fn backward_rows(
    probabilities: &[f32],
    labels: &[usize],
    classes: usize,
    label_smoothing: f32,
    grad: &mut [f32],
    stride: usize,
    mean: MeanOver,
) {
    struct Kernel<'a>(&'a [f32], &'a [usize], usize, f32, &'a mut [f32], usize, MeanOver);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            let Kernel(probabilities, labels, classes, smoothing, grad, stride, mean) = self;
            backward_rows_body(probabilities, labels, classes, smoothing, grad, stride, mean);
        }
    }
    crate::kernels::vectorize(Kernel(
        probabilities,
        labels,
        classes,
        label_smoothing,
        grad,
        stride,
        mean,
    ));
}

// The loops themselves, inlined into each instruction set's build above. The exponentials and logarithm
// are libm calls in f64 (the softmax of one batch is a few thousand values, a negligible share of a step);
// the maxima, sums and the gradient vectorize.
#[inline(always)]
fn forward_rows_body(
    logits: &[f32],
    stride: usize,
    classes: usize,
    labels: &[usize],
    label_smoothing: f32,
    probabilities: &mut [f32],
) -> f64 {
    let eps = label_smoothing as f64;
    let mut total = 0.0f64;
    for (i, (&label, p)) in labels.iter().zip(probabilities.chunks_exact_mut(classes)).enumerate() {
        let row = &logits[i * stride..][..classes];
        let shift = log_softmax_shift(row);
        let log_p = |c: usize| row[c] as f64 - shift;
        let smooth_term = (0..classes).map(log_p).sum::<f64>() / classes as f64;
        total -= (1.0 - eps) * log_p(label) + eps * smooth_term;
        for (c, pv) in p.iter_mut().enumerate() {
            *pv = log_p(c).exp() as f32;
        }
    }
    total / labels.len().max(1) as f64
}

/// `log softmax(row)[c] = row[c] - shift`: the shift is the row's log-sum-exp, taken over the logits
/// shifted by their maximum, in f64.
#[inline(always)]
fn log_softmax_shift(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// The softmax probabilities of each row of `classes` logits (the loss's own log-softmax).
pub fn softmax_rows(logits: &[f32], classes: usize) -> Vec<f32> {
    logits
        .chunks_exact(classes.max(1))
        .flat_map(|row| {
            let shift = log_softmax_shift(row);
            row.iter().map(move |&v| (v as f64 - shift).exp() as f32)
        })
        .collect()
}

#[inline(always)]
fn backward_rows_body(
    probabilities: &[f32],
    labels: &[usize],
    classes: usize,
    label_smoothing: f32,
    grad: &mut [f32],
    stride: usize,
    MeanOver { weight, images }: MeanOver,
) {
    let n = images as f32;
    let off = label_smoothing / classes as f32;
    for (i, (&label, p)) in labels.iter().zip(probabilities.chunks_exact(classes)).enumerate() {
        let row = &mut grad[i * stride..][..classes];
        for (g, &pv) in row.iter_mut().zip(p) {
            *g = (pv - off) / n;
        }
        row[label] -= (1.0 - label_smoothing) / n;
        // An auxiliary head's loss counts `weight` times; the main loss (weight 1) is left as computed.
        if weight != 1.0 {
            row.iter_mut().for_each(|g| *g *= weight);
        }
    }
}

/// Checks there is one label per row and each is in `0..classes`, naming `op` and what was found.
pub(crate) fn check_labels(op: &str, labels: &[usize], rows: usize, classes: usize) -> Result<()> {
    if labels.len() != rows {
        return Err(Error::shape(
            &format!("{op} labels"),
            format!("{rows} labels (one per row of logits)"),
            format!("{} labels", labels.len()),
        ));
    }
    match labels.iter().enumerate().find(|&(_, &label)| label >= classes) {
        Some((index, &label)) => Err(Error::Label {
            op: op.to_string(),
            index,
            label,
            classes,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correct_rows_counts_argmax_hits_with_ties_to_the_first() {
        // Three rows of 3 logits, 4 apart (one value of padding per row).
        let logits = [
            0.1, 0.9, 0.3, 99.0, // argmax 1
            2.0, 2.0, 1.0, 99.0, // a tie: argmax 0
            -1.0, -3.0, -0.5, 99.0, // argmax 2
        ];
        assert_eq!(correct_rows(&logits, 4, 3, &[1, 0, 2]), 3);
        assert_eq!(correct_rows(&logits, 4, 3, &[1, 1, 0]), 1);
        assert_eq!(correct_rows(&logits, 4, 3, &[0, 1, 1]), 0);
    }
}
