//! ReLU and dropout.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::error::{Error, Result, expect_shape};

/// `max(x, 0)` elementwise.
pub fn relu<D: Dimension>(x: ArrayView<f32, D>) -> Array<f32, D> {
    x.mapv(|v| v.max(0.0))
}

/// The ReLU input gradient from its *output* `y`: `dy` where `y > 0`, else 0 (PyTorch's choice at 0).
pub fn relu_backward<D: Dimension>(y: ArrayView<f32, D>, dy: ArrayView<f32, D>) -> Result<Array<f32, D>> {
    expect_shape("relu output gradient", y.shape(), dy.shape())?;
    Ok(Zip::from(&y)
        .and(&dy)
        .map_collect(|&y, &d| if y > 0.0 { d } else { 0.0 }))
}

/// Inverted dropout: in training each value is zeroed with probability `p` and the survivors scaled by
/// `1 / (1 - p)`, so eval mode is the identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing a value, in `[0, 1]`.
    pub p: f32,
}

/// The per-element factor (0 or `1 / (1 - p)`) a training forward applied, kept for backward.
#[derive(Debug, Clone)]
pub struct DropoutMask {
    factors: Vec<f32>,
    shape: Vec<usize>,
}

impl Dropout {
    /// Dropout with probability `p`; an error unless `0 <= p <= 1`.
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::config("dropout", format!("p must be in [0, 1], found {p}")));
        }
        Ok(Dropout { p })
    }

    /// Training forward with a seeded mask: the same seed gives the same mask.
    pub fn forward_train<D: Dimension>(&self, x: ArrayView<f32, D>, seed: u64) -> (Array<f32, D>, DropoutMask) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let keep = if self.p < 1.0 { 1.0 / (1.0 - self.p) } else { 0.0 };
        let factors: Vec<f32> = (0..x.len())
            .map(|_| if rng.f32() < self.p { 0.0 } else { keep })
            .collect();
        let mut y = x.as_standard_layout().into_owned();
        for (v, f) in y.iter_mut().zip(&factors) {
            *v *= f;
        }
        (
            y,
            DropoutMask {
                factors,
                shape: x.shape().to_vec(),
            },
        )
    }

    /// The input gradient: `dy` times the mask's factors.
    pub fn backward<D: Dimension>(&self, mask: &DropoutMask, dy: ArrayView<f32, D>) -> Result<Array<f32, D>> {
        expect_shape("dropout output gradient", &mask.shape, dy.shape())?;
        let mut dx = dy.as_standard_layout().into_owned();
        for (v, f) in dx.iter_mut().zip(&mask.factors) {
            *v *= f;
        }
        Ok(dx)
    }
}
