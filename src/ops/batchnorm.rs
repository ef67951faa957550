//! Batch normalization over NCHW activations, as PyTorch's `BatchNorm2d`.
//!
//! Training mode normalizes with the batch's mean and biased variance, and moves the running statistics
//! by `momentum` toward the batch mean and the *unbiased* variance. Eval mode normalizes with the running
//! statistics. The backward pass is the closed form
//! `dx = gamma * rstd / m * (m * dy - sum(dy) - xhat * sum(dy * xhat))`, with `m = n * h * w`
//! (in eval mode the statistics are constants, so `dx = gamma * rstd * dy`).

use ndarray::{Array1, Array4, ArrayView1, ArrayView4, ArrayViewMut1};
use rayon::prelude::*;

use super::batchnorm_blocked::{add_input_grad_blocked, normalize_images_blocked};
use crate::blocked::Layout;
use crate::error::{Error, Result, expect_shape};
use crate::kernels;
use crate::tensor::{Images, ImagesMut, contiguous, dims4, with_contiguous_mut};

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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelStats {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// `1 / sqrt(var + eps)` per channel.
    pub rstd: Vec<f32>,
    /// The biased variance per channel (the batch's, or the running one in eval mode).
    pub var: Vec<f32>,
    /// True if these are the batch's own statistics (training mode).
    pub batch_statistics: bool,
    /// Values per channel the statistics were taken over (`n * h * w`).
    pub count: usize,
}

/// What [`BatchNorm2d`]'s backward needs from its forward.
pub type BatchNormCache = ChannelStats;

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
        running_mean: ArrayViewMut1<f32>,
        running_var: ArrayViewMut1<f32>,
    ) -> Result<(Array4<f32>, BatchNormCache)> {
        let running = [running_mean.shape(), running_var.shape()];
        let (y, stats) = self.forward_with(x, gamma, beta, running, |x, plane, stats| {
            self.batch_statistics(x, plane, Layout::Nchw, stats)
        })?;
        with_contiguous_mut(running_mean, |rm| {
            with_contiguous_mut(running_var, |rv| self.update_running_statistics(&stats, rm, rv))
        });
        Ok((y, stats))
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
        let running = [running_mean.shape(), running_var.shape()];
        self.forward_with(x, gamma, beta, running, |_, _, stats| {
            self.running_statistics(&running_mean.to_vec(), &running_var.to_vec(), stats);
            Ok(())
        })
    }

    /// Both forwards: checks the shapes (`running`: the running statistics'), then normalizes `x` with
    /// the statistics `statistics(x, pixels per plane, stats)` writes.
    fn forward_with(
        &self,
        x: ArrayView4<f32>,
        gamma: ArrayView1<f32>,
        beta: ArrayView1<f32>,
        running: [&[usize]; 2],
        statistics: impl FnOnce(Images<'_>, usize, &mut ChannelStats) -> Result<()>,
    ) -> Result<(Array4<f32>, ChannelStats)> {
        self.check_forward(x.shape(), [gamma.shape(), beta.shape(), running[0], running[1]])?;
        let [n, c, h, w] = dims4(&x);
        let xs = contiguous(&x);
        let x_images = Images::dense(&xs, n, c * h * w);
        let mut stats = ChannelStats::default();
        statistics(x_images, h * w, &mut stats)?;
        let y = self.normalize_array(x_images, [n, c, h, w], &stats, &gamma, &beta);
        Ok((y, stats))
    }

    fn normalize_array(
        &self,
        x: Images<'_>,
        shape: [usize; 4],
        stats: &ChannelStats,
        gamma: &ArrayView1<f32>,
        beta: &ArrayView1<f32>,
    ) -> Array4<f32> {
        let [n, c, h, w] = shape;
        let mut y = Array4::zeros(shape);
        let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
        let (gamma, beta) = (gamma.to_vec(), beta.to_vec());
        self.normalize_images(
            x,
            h * w,
            Layout::Nchw,
            stats,
            &gamma,
            &beta,
            false,
            &mut ImagesMut::dense(y_slice, n, c * h * w),
        );
        y
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
        let mut dx = Array4::zeros([n, c, h, w]);
        let dx_slice = dx.as_slice_mut().expect("fresh arrays are contiguous");
        let (mut dgamma, mut dbeta) = (vec![0.0; c], vec![0.0; c]);
        self.backward_images(
            Images::dense(&xs, n, c * h * w),
            Images::dense(&dys, n, c * h * w),
            h * w,
            Layout::Nchw,
            cache,
            &gamma.to_vec(),
            (&mut dgamma, &mut dbeta),
            Some(&mut ImagesMut::dense(dx_slice, n, c * h * w)),
        );
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
        let [n, c, h, w] = dims4(&x);
        let (xs, dys) = (contiguous(&x), contiguous(&dy));
        let gamma = vec![1.0; c];
        with_contiguous_mut(dgamma, |dg| {
            with_contiguous_mut(dbeta, |db| {
                self.backward_images(
                    Images::dense(&xs, n, c * h * w),
                    Images::dense(&dys, n, c * h * w),
                    h * w,
                    Layout::Nchw,
                    cache,
                    &gamma,
                    (dg, db),
                    None,
                )
            })
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

    // The slice-level passes, shared by the ndarray API above and the graph executor. Images hold
    // `channels * pixels` values each.

    // Each pass below is written once; `layout` only chooses how it walks memory: the NCHW walks are
    // here, the blocked ones (a block's 16 channels side by side) in `batchnorm_blocked.rs`, each
    // summing a channel in float64 in pixel order within an image and image order within the batch.

    /// The batch's statistics of `x` (images in `layout`) into `stats` (reusing its vectors): per
    /// channel, two passes in f64, the mean and then the sum of squared deviations (no cancellation).
    pub fn batch_statistics(
        &self,
        x: Images<'_>,
        pixels: usize,
        layout: Layout,
        stats: &mut ChannelStats,
    ) -> Result<()> {
        let count = self.start_batch_statistics(x.count(), pixels, stats)?;
        let mut sums = vec![0f64; self.channels];
        self.channel_sums(x, pixels, layout, &mut sums);
        let means: Vec<f64> = sums.iter().map(|s| s / count as f64).collect();
        self.channel_squared_deviations(x, pixels, layout, &means, &mut sums);
        self.finish_statistics(&means, &sums, count, stats);
        Ok(())
    }

    /// Writes per channel `Σ x` over the images of `x` (f64, pixel order within an image, then image
    /// order) into `sums`.
    pub(crate) fn channel_sums(&self, x: Images<'_>, pixels: usize, layout: Layout, sums: &mut [f64]) {
        match layout {
            Layout::Nchw => self.channel_sums_nchw(x, pixels, sums),
            Layout::Blocked => self.channel_sums_blocked(x, pixels, sums),
        }
    }

    /// Writes per channel `Σ (x - means[ch])²` over the images of `x` into `squares`.
    pub(crate) fn channel_squared_deviations(
        &self,
        x: Images<'_>,
        pixels: usize,
        layout: Layout,
        means: &[f64],
        squares: &mut [f64],
    ) {
        match layout {
            Layout::Nchw => self.channel_squared_deviations_nchw(x, pixels, means, squares),
            Layout::Blocked => self.channel_squared_deviations_blocked(x, pixels, means, squares),
        }
    }

    fn channel_sums_nchw(&self, x: Images<'_>, pixels: usize, sums: &mut [f64]) {
        sums[..self.channels].par_iter_mut().enumerate().for_each(|(ch, sum)| {
            *sum = (0..x.count())
                .map(|n| kernels::sum(plane(x, n, ch, pixels)))
                .sum::<f64>();
        });
    }

    fn channel_squared_deviations_nchw(&self, x: Images<'_>, pixels: usize, means: &[f64], squares: &mut [f64]) {
        squares[..self.channels]
            .par_iter_mut()
            .enumerate()
            .for_each(|(ch, ss)| {
                *ss = (0..x.count())
                    .map(|n| kernels::squared_deviation(plane(x, n, ch, pixels), means[ch]))
                    .sum();
            });
    }

    /// Fills `stats` (sized by [`BatchNorm2d::start_batch_statistics`]) from each channel's mean and
    /// sum of squared deviations over `count` values.
    pub(crate) fn finish_statistics(&self, means: &[f64], squares: &[f64], count: usize, stats: &mut ChannelStats) {
        for ch in 0..self.channels {
            (stats.mean[ch], stats.var[ch], stats.rstd[ch]) = self.channel_statistics(means[ch], squares[ch], count);
        }
    }

    /// Checks that a batch of `images` images of `pixels` pixels has more than one value per channel,
    /// sizes `stats` and marks them as the batch's; returns the values per channel.
    pub(crate) fn start_batch_statistics(
        &self,
        images: usize,
        pixels: usize,
        stats: &mut ChannelStats,
    ) -> Result<usize> {
        let count = images * pixels;
        if count < 2 {
            return Err(Error::shape(
                "batch_norm2d input",
                "more than one value per channel in training mode",
                format!("{images} image(s) of {pixels} pixel(s)"),
            ));
        }
        stats.resize(self.channels);
        stats.batch_statistics = true;
        stats.count = count;
        Ok(count)
    }

    /// `(mean, biased variance, 1 / sqrt(variance + eps))` of a channel from its mean `m` and its sum
    /// of squared deviations `ss` over `count` values.
    pub(crate) fn channel_statistics(&self, m: f64, ss: f64, count: usize) -> (f32, f32, f32) {
        let v = ss / count as f64;
        (m as f32, v as f32, (1.0 / (v + self.eps as f64).sqrt()) as f32)
    }

    /// Eval-mode statistics: the running mean and variance.
    pub fn running_statistics(&self, running_mean: &[f32], running_var: &[f32], stats: &mut ChannelStats) {
        stats.resize(self.channels);
        stats.batch_statistics = false;
        stats.mean.copy_from_slice(running_mean);
        stats.var.copy_from_slice(running_var);
        for (r, &v) in stats.rstd.iter_mut().zip(running_var) {
            *r = 1.0 / (v + self.eps).sqrt();
        }
    }

    /// Moves the running statistics toward a batch's: the mean, and the *unbiased* variance.
    pub fn update_running_statistics(&self, stats: &ChannelStats, running_mean: &mut [f32], running_var: &mut [f32]) {
        let m = self.momentum;
        let unbias = stats.count as f64 / (stats.count.max(2) - 1) as f64;
        for ch in 0..self.channels {
            running_mean[ch] = (1.0 - m) * running_mean[ch] + m * stats.mean[ch];
            running_var[ch] = (1.0 - m) * running_var[ch] + m * (stats.var[ch] as f64 * unbias) as f32;
        }
    }

    /// `y = gamma * (x - mean) * rstd + beta` per channel, then `max(y, 0)` if `relu`, on images in
    /// `layout` (padding channels of blocked images stay zero).
    #[allow(clippy::too_many_arguments)]
    pub fn normalize_images(
        &self,
        x: Images<'_>,
        pixels: usize,
        layout: Layout,
        stats: &ChannelStats,
        gamma: &[f32],
        beta: &[f32],
        relu: bool,
        y: &mut ImagesMut<'_>,
    ) {
        let affine: Vec<(f32, f32)> = (0..self.channels)
            .map(|ch| scale_shift(stats, gamma, beta, ch))
            .collect();
        if layout == Layout::Blocked {
            return normalize_images_blocked(x, pixels, &affine, relu, y);
        }
        y.par_iter_mut().for_each(|(n, out)| {
            let image = x.get(n);
            for (ch, &(scale, shift)) in affine.iter().enumerate() {
                let out = &mut out[ch * pixels..][..pixels];
                kernels::scale_shift(out, &image[ch * pixels..][..pixels], scale, shift);
                if relu {
                    kernels::relu_in_place(out);
                }
            }
        });
    }

    /// Adds `d gamma` and `d beta` into `param_grads`, and the input gradient into `dx` if given.
    /// With batch statistics, `dx = gamma·rstd/m · (m·dy - Σdy - x̂·Σdy·x̂)`; with running ones,
    /// `dx = gamma·rstd·dy`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_images(
        &self,
        x: Images<'_>,
        dy: Images<'_>,
        pixels: usize,
        layout: Layout,
        stats: &ChannelStats,
        gamma: &[f32],
        (dgamma, dbeta): (&mut [f32], &mut [f32]),
        dx: Option<&mut ImagesMut<'_>>,
    ) {
        let sums = self.grad_sums(x, dy, pixels, layout, stats);
        for (ch, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
            dbeta[ch] += sum_dy as f32;
            dgamma[ch] += sum_dy_xhat as f32;
        }
        if let Some(dx) = dx {
            let coefficients = input_grad_coefficients_all(stats, gamma, &sums, (x.count() * pixels) as f64);
            self.add_input_grad(x, dy, pixels, layout, &stats.mean, &coefficients, dx);
        }
    }

    /// Per channel `(Σ dy, Σ dy·x̂)` over the images of `x` and `dy`, in f64: `d beta` and `d gamma`,
    /// and what the input gradient needs.
    pub(crate) fn grad_sums(
        &self,
        x: Images<'_>,
        dy: Images<'_>,
        pixels: usize,
        layout: Layout,
        stats: &ChannelStats,
    ) -> Vec<(f64, f64)> {
        match layout {
            Layout::Nchw => self.grad_sums_nchw(x, dy, pixels, stats),
            Layout::Blocked => self.grad_sums_blocked(x, dy, pixels, stats),
        }
    }

    fn grad_sums_nchw(&self, x: Images<'_>, dy: Images<'_>, pixels: usize, stats: &ChannelStats) -> Vec<(f64, f64)> {
        (0..self.channels)
            .into_par_iter()
            .map(|ch| {
                let (mut sum_dy, mut sum_centered) = (0.0f64, 0.0f64);
                for n in 0..x.count() {
                    let (s, d) = kernels::sum_and_dot_centered(
                        plane(dy, n, ch, pixels),
                        plane(x, n, ch, pixels),
                        stats.mean[ch],
                    );
                    sum_dy += s;
                    sum_centered += d;
                }
                (sum_dy, sum_centered * stats.rstd[ch] as f64)
            })
            .collect()
    }

    /// Adds the input gradient of the images of `x` and `dy` into `dx`: per channel
    /// `dx = a·dy + b·(x - mean) + c` with its `coefficients` `[a, b, c]`
    /// ([`input_grad_coefficients_all`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_input_grad(
        &self,
        x: Images<'_>,
        dy: Images<'_>,
        pixels: usize,
        layout: Layout,
        mean: &[f32],
        coefficients: &[[f32; 3]],
        dx: &mut ImagesMut<'_>,
    ) {
        if layout == Layout::Blocked {
            return add_input_grad_blocked(x, dy, pixels, mean, coefficients, dx);
        }
        dx.par_iter_mut().for_each(|(n, dx_image)| {
            for (ch, &k) in coefficients.iter().enumerate() {
                let out = &mut dx_image[ch * pixels..][..pixels];
                let (dy, x) = (plane(dy, n, ch, pixels), plane(x, n, ch, pixels));
                kernels::add_affine_of_two(out, dy, x, mean[ch], k);
            }
        });
    }
}

/// Every channel's [`input_grad_coefficients`] from its `sums` over `m` values.
pub(crate) fn input_grad_coefficients_all(
    stats: &ChannelStats,
    gamma: &[f32],
    sums: &[(f64, f64)],
    m: f64,
) -> Vec<[f32; 3]> {
    (0..sums.len())
        .map(|ch| input_grad_coefficients(stats, gamma, ch, sums[ch], m))
        .collect()
}

/// `(scale, shift)` with `y = scale·x + shift` the normalization of channel `ch`.
pub(crate) fn scale_shift(stats: &ChannelStats, gamma: &[f32], beta: &[f32], ch: usize) -> (f32, f32) {
    let scale = gamma[ch] * stats.rstd[ch];
    (scale, beta[ch] - stats.mean[ch] * scale)
}

/// `[a, b, c]` with `dx = a·dy + b·(x - mean) + c` for channel `ch`, folded in f64 from the channel's
/// `(Σ dy, Σ dy·x̂)` over `m` values: with batch statistics `dx = gamma·rstd/m · (m·dy - Σdy -
/// x̂·Σdy·x̂)`, with running ones `dx = gamma·rstd·dy`.
pub(crate) fn input_grad_coefficients(
    stats: &ChannelStats,
    gamma: &[f32],
    ch: usize,
    (sum_dy, sum_dy_xhat): (f64, f64),
    m: f64,
) -> [f32; 3] {
    let (rstd, g) = (stats.rstd[ch] as f64, gamma[ch] as f64);
    if stats.batch_statistics {
        let k = g * rstd / m;
        [k * m, -k * rstd * sum_dy_xhat, -k * sum_dy].map(|v| v as f32)
    } else {
        [(g * rstd) as f32, 0.0, 0.0]
    }
}

/// Channel `ch` of image `n`.
fn plane(images: Images<'_>, n: usize, ch: usize, pixels: usize) -> &[f32] {
    &images.get(n)[ch * pixels..][..pixels]
}

impl ChannelStats {
    pub(crate) fn resize(&mut self, channels: usize) {
        for v in [&mut self.mean, &mut self.rstd, &mut self.var] {
            v.resize(channels, 0.0);
        }
    }
}
