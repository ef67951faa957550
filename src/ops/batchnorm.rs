//! Batch normalization over NCHW activations, as PyTorch's `BatchNorm2d`.
//!
//! Training mode normalizes with the batch's mean and biased variance, and moves the running statistics
//! by `momentum` toward the batch mean and the *unbiased* variance. Eval mode normalizes with the running
//! statistics. The backward pass is the closed form
//! `dx = gamma * rstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`, with `m = n * h * w`
//! (in eval mode the statistics are constants, so `dx = gamma * rstd * dy`).

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut1};
use rayon::prelude::*;

use crate::error::{Error, Result, expect_shape};
use crate::kernels;
use crate::tensor::{contiguous, dims4, with_contiguous_mut};

/// Batch-norm settings; `gamma`, `beta` and the running statistics are passed to each call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNorm2d {
    /// Channels.
    pub channels: usize,
    /// Added to the variance before the square root (PyTorch 1e-5, torchvision's Inception nets 1e-3).
    pub eps: f32,
    /// Weight of the new batch statistic in the running average (PyTorch 0.1).
    pub momentum: f32,
}

/// The per-channel statistics a forward pass normalized with, kept for backward.
#[derive(Debug, Clone)]
pub struct BatchNormCache {
    /// Mean per channel.
    pub mean: Array1<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub rstd: Array1<f32>,
    /// True if these are the batch's own statistics (training mode).
    pub batch_statistics: bool,
}

/// The gradients of [`BatchNorm2d`]'s parameters.
#[derive(Debug, Clone)]
pub struct BatchNormParamGrads {
    /// d loss / d gamma.
    pub dgamma: Array1<f32>,
    /// d loss / d beta.
    pub dbeta: Array1<f32>,
}

impl BatchNorm2d {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1.
    pub fn new(channels: usize) -> Self {
        BatchNorm2d {
            channels,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Sets eps.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Sets the momentum.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }

    fn check(&self, x: &[usize], vectors: &[(&str, &[usize])]) -> Result<()> {
        if x.len() != 4 || x[1] != self.channels {
            return Err(Error::shape(
                "batch_norm2d input",
                format!("[n, {}, h, w]", self.channels),
                format!("{x:?}"),
            ));
        }
        for (name, shape) in vectors {
            expect_shape(&format!("batch_norm2d {name}"), &[self.channels], shape)?;
        }
        Ok(())
    }

    /// Checks a forward call: the input and gamma, beta, running mean and running variance.
    fn check_forward(&self, x: &[usize], [gamma, beta, mean, var]: [&[usize]; 4]) -> Result<()> {
        self.check(
            x,
            &[
                ("gamma", gamma),
                ("beta", beta),
                ("running_mean", mean),
                ("running_var", var),
            ],
        )
    }

    /// Training-mode forward: normalizes with batch statistics and updates the running ones.
    pub fn forward_train(
        &self,
        x: ArrayView4<f32>,
        gamma: ArrayView1<f32>,
        beta: ArrayView1<f32>,
        mut running_mean: ArrayViewMut1<f32>,
        mut running_var: ArrayViewMut1<f32>,
    ) -> Result<(Array4<f32>, BatchNormCache)> {
        self.check_forward(
            x.shape(),
            [gamma.shape(), beta.shape(), running_mean.shape(), running_var.shape()],
        )?;
        let [n, c, h, w] = dims4(&x);
        let m = n * h * w;
        if m < 2 {
            return Err(Error::shape(
                "batch_norm2d input",
                "more than one value per channel in training mode",
                format!("{:?}", x.shape()),
            ));
        }
        let xs = contiguous(&x);
        // Two passes in f64 per channel: mean, then the sum of squared deviations (no cancellation).
        let stats: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = || (0..n).map(|i| &xs[(i * c + ch) * h * w..][..h * w]);
                let mean = planes().map(kernels::sum).sum::<f64>() / m as f64;
                let ss = planes().map(|p| kernels::squared_deviation(p, mean)).sum::<f64>();
                (mean, ss / m as f64)
            })
            .collect();
        let mean: Array1<f32> = stats.iter().map(|s| s.0 as f32).collect();
        let rstd: Array1<f32> = stats
            .iter()
            .map(|s| (1.0 / (s.1 + self.eps as f64).sqrt()) as f32)
            .collect();
        let momentum = self.momentum;
        for (ch, (biased_mean, biased_var)) in stats.iter().enumerate() {
            let unbiased = biased_var * m as f64 / (m - 1) as f64;
            running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * *biased_mean as f32;
            running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * unbiased as f32;
        }
        let cache = BatchNormCache {
            mean,
            rstd,
            batch_statistics: true,
        };
        let y = normalize(&xs, [n, c, h, w], &cache, &gamma, &beta);
        Ok((y, cache))
    }

    /// Eval-mode forward: normalizes with the running statistics.
    pub fn forward_eval(
        &self,
        x: ArrayView4<f32>,
        gamma: ArrayView1<f32>,
        beta: ArrayView1<f32>,
        running_mean: ArrayView1<f32>,
        running_var: ArrayView1<f32>,
    ) -> Result<(Array4<f32>, BatchNormCache)> {
        self.check_forward(
            x.shape(),
            [gamma.shape(), beta.shape(), running_mean.shape(), running_var.shape()],
        )?;
        let cache = BatchNormCache {
            mean: running_mean.to_owned(),
            rstd: running_var.mapv(|v| 1.0 / (v + self.eps).sqrt()),
            batch_statistics: false,
        };
        let y = normalize(&contiguous(&x), dims4(&x), &cache, &gamma, &beta);
        Ok((y, cache))
    }

    /// The input gradient.
    pub fn backward_input(
        &self,
        x: ArrayView4<f32>,
        dy: ArrayView4<f32>,
        gamma: ArrayView1<f32>,
        cache: &BatchNormCache,
    ) -> Result<Array4<f32>> {
        self.check(x.shape(), &[("gamma", gamma.shape())])?;
        expect_shape("batch_norm2d output gradient", x.shape(), dy.shape())?;
        let [n, c, h, w] = dims4(&x);
        let (xs, dys) = (contiguous(&x), contiguous(&dy));
        let sums = channel_sums(&xs, &dys, [n, c, h, w], cache);
        let m = (n * h * w) as f64;
        let mut dx = Array4::zeros([n, c, h, w]);
        let dx_slice = dx.as_slice_mut().expect("fresh arrays are contiguous");
        dx_slice.par_chunks_mut(h * w).enumerate().for_each(|(p, plane)| {
            let ch = p % c;
            let (mean, rstd, g) = (cache.mean[ch], cache.rstd[ch] as f64, gamma[ch] as f64);
            let (x_p, dy_p) = (&xs[p * h * w..][..h * w], &dys[p * h * w..][..h * w]);
            if cache.batch_statistics {
                let (sum_dy, sum_dy_xhat) = sums[ch];
                // dx = k·(m·dy - Σdy - x̂·Σdy·x̂) with x̂ = (x - mean)·rstd, coefficients folded in f64.
                let k = g * rstd / m;
                let coefficients = [k * m, -k * rstd * sum_dy_xhat, -k * sum_dy].map(|v| v as f32);
                kernels::affine_of_two(plane, dy_p, x_p, mean, coefficients);
            } else {
                kernels::scale_shift(plane, dy_p, (g * rstd) as f32, 0.0);
            }
        });
        Ok(dx)
    }

    /// The gradients of gamma and beta, added to `dgamma` and `dbeta`.
    pub fn backward_params(
        &self,
        x: ArrayView4<f32>,
        dy: ArrayView4<f32>,
        cache: &BatchNormCache,
        dgamma: ArrayViewMut1<f32>,
        dbeta: ArrayViewMut1<f32>,
    ) -> Result<()> {
        self.check(
            x.shape(),
            &[("gamma gradient", dgamma.shape()), ("beta gradient", dbeta.shape())],
        )?;
        expect_shape("batch_norm2d output gradient", x.shape(), dy.shape())?;
        let sums = channel_sums(&contiguous(&x), &contiguous(&dy), dims4(&x), cache);
        with_contiguous_mut(dbeta, |db| db.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.0 as f32));
        with_contiguous_mut(dgamma, |dg| {
            dg.iter_mut().zip(&sums).for_each(|(d, s)| *d += s.1 as f32)
        });
        Ok(())
    }

    /// Both parameter gradients as fresh arrays.
    pub fn param_grads(
        &self,
        x: ArrayView4<f32>,
        dy: ArrayView4<f32>,
        cache: &BatchNormCache,
    ) -> Result<BatchNormParamGrads> {
        let (mut dgamma, mut dbeta) = (Array1::zeros(self.channels), Array1::zeros(self.channels));
        self.backward_params(x, dy, cache, dgamma.view_mut(), dbeta.view_mut())?;
        Ok(BatchNormParamGrads { dgamma, dbeta })
    }
}

/// `y = gamma * (x - mean) * rstd + beta`, per channel.
fn normalize(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    cache: &BatchNormCache,
    gamma: &ArrayView1<f32>,
    beta: &ArrayView1<f32>,
) -> Array4<f32> {
    let mut y = Array4::zeros([n, c, h, w]);
    let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
    if h * w > 0 {
        y_slice.par_chunks_mut(h * w).enumerate().for_each(|(p, plane)| {
            let ch = p % c;
            let scale = gamma[ch] * cache.rstd[ch];
            let shift = beta[ch] - cache.mean[ch] * scale;
            kernels::scale_shift(plane, &x[p * h * w..][..h * w], scale, shift);
        });
    }
    y
}

/// Per channel: `(sum(dy), sum(dy * xhat))` in f64.
fn channel_sums(x: &[f32], dy: &[f32], [n, c, h, w]: [usize; 4], cache: &BatchNormCache) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, rstd) = (cache.mean[ch], cache.rstd[ch] as f64);
            let (mut sum_dy, mut sum_dy_centered) = (0.0f64, 0.0f64);
            for i in 0..n {
                let at = (i * c + ch) * h * w;
                let (s, d) = kernels::sum_and_dot_centered(&dy[at..at + h * w], &x[at..at + h * w], mean);
                sum_dy += s;
                sum_dy_centered += d;
            }
            (sum_dy, sum_dy_centered * rstd)
        })
        .collect()
}
