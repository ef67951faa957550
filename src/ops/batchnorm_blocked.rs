//! How batch norm walks the blocked layout (`crate::blocked`): the passes of `batchnorm.rs` (which
//! chooses the walk by layout) with the 16 channels of a block handled side by side, each summed in
//! float64 in pixel order within an image and image order within the batch. Padding channels get a
//! scale and shift of zero, so they stay zero, and no statistic or gradient.

use rayon::prelude::*;

use super::batchnorm::{BatchNorm2d, ChannelStats};
use crate::blocked;
use crate::microkernel::LANES;
use crate::tensor::{Images, ImagesMut};

/// The means of block `b`'s 16 channels (zero for padding channels).
fn block_mean(stats: &ChannelStats, b: usize) -> [f32; LANES] {
    std::array::from_fn(|lane| stats.mean.get(b * LANES + lane).copied().unwrap_or(0.0))
}

/// Block `b` of image `n`: `pixels` pixels of 16 channels.
fn block_plane(images: Images<'_>, n: usize, b: usize, pixels: usize) -> &[f32] {
    &images.get(n)[b * pixels * LANES..][..pixels * LANES]
}

impl BatchNorm2d {
    /// [`BatchNorm2d::channel_sums`] of blocked images (each channel summed in pixel order, then image
    /// order, a block's 16 side by side).
    pub(super) fn channel_sums_blocked(&self, x: Images<'_>, pixels: usize, sums: &mut [f64]) {
        sums[..self.channels]
            .par_chunks_mut(LANES)
            .enumerate()
            .for_each(|(b, block_sums)| {
                let mut sum = [0f64; LANES];
                for n in 0..x.count() {
                    for pixel in block_plane(x, n, b, pixels).chunks_exact(LANES) {
                        sum.iter_mut().zip(pixel).for_each(|(s, &v)| *s += v as f64);
                    }
                }
                block_sums.copy_from_slice(&sum[..block_sums.len()]);
            });
    }

    /// [`BatchNorm2d::channel_squared_deviations`] of blocked images.
    pub(super) fn channel_squared_deviations_blocked(
        &self,
        x: Images<'_>,
        pixels: usize,
        means: &[f64],
        squares: &mut [f64],
    ) {
        squares[..self.channels]
            .par_chunks_mut(LANES)
            .enumerate()
            .for_each(|(b, block_squares)| {
                let m: [f64; LANES] = std::array::from_fn(|lane| means.get(b * LANES + lane).copied().unwrap_or(0.0));
                let mut ss = [0f64; LANES];
                for n in 0..x.count() {
                    for pixel in block_plane(x, n, b, pixels).chunks_exact(LANES) {
                        for ((s, &v), &m) in ss.iter_mut().zip(pixel).zip(&m) {
                            *s += (v as f64 - m).powi(2);
                        }
                    }
                }
                block_squares.copy_from_slice(&ss[..block_squares.len()]);
            });
    }

    /// [`BatchNorm2d::grad_sums`] of blocked images, a block's 16 channels side by side.
    pub(super) fn grad_sums_blocked(
        &self,
        x: Images<'_>,
        dy: Images<'_>,
        pixels: usize,
        stats: &ChannelStats,
    ) -> Vec<(f64, f64)> {
        let blocks: Vec<[(f64, f64); LANES]> = (0..blocked::blocks(self.channels))
            .into_par_iter()
            .map(|b| {
                let mean = block_mean(stats, b);
                let (mut sum_dy, mut sum_centered) = ([0f64; LANES], [0f64; LANES]);
                for n in 0..x.count() {
                    let (dy, x) = (block_plane(dy, n, b, pixels), block_plane(x, n, b, pixels));
                    for (g, v) in dy.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
                        for lane in 0..LANES {
                            sum_dy[lane] += g[lane] as f64;
                            sum_centered[lane] += g[lane] as f64 * (v[lane] - mean[lane]) as f64;
                        }
                    }
                }
                std::array::from_fn(|lane| {
                    let rstd = stats.rstd.get(b * LANES + lane).copied().unwrap_or(0.0);
                    (sum_dy[lane], sum_centered[lane] * rstd as f64)
                })
            })
            .collect();
        (0..self.channels).map(|ch| blocks[ch / LANES][ch % LANES]).collect()
    }
}

/// [`BatchNorm2d::add_input_grad`] of blocked images: the channels' `mean` and `coefficients`, zero for
/// the padding channels.
pub(super) fn add_input_grad_blocked(
    x: Images<'_>,
    dy: Images<'_>,
    pixels: usize,
    mean: &[f32],
    coefficients: &[[f32; 3]],
    dx: &mut ImagesMut<'_>,
) {
    dx.par_iter_mut().for_each(|(n, dx_image)| {
        for (b, block_coefficients) in coefficients.chunks(LANES).enumerate() {
            let lane_mean: [f32; LANES] =
                std::array::from_fn(|lane| mean.get(b * LANES + lane).copied().unwrap_or(0.0));
            let mut k = [[0f32; 3]; LANES];
            k[..block_coefficients.len()].copy_from_slice(block_coefficients);
            let out = &mut dx_image[b * pixels * LANES..][..pixels * LANES];
            let (dy, x) = (block_plane(dy, n, b, pixels), block_plane(x, n, b, pixels));
            for ((o, g), v) in out
                .chunks_exact_mut(LANES)
                .zip(dy.chunks_exact(LANES))
                .zip(x.chunks_exact(LANES))
            {
                for lane in 0..LANES {
                    let [a, bb, c] = k[lane];
                    o[lane] += a * g[lane] + bb * (v[lane] - lane_mean[lane]) + c;
                }
            }
        }
    });
}

/// [`BatchNorm2d::normalize_images`] of blocked images, with each channel's `(scale, shift)` in `affine`
/// (zero for the padding channels).
pub(super) fn normalize_images_blocked(
    x: Images<'_>,
    pixels: usize,
    affine: &[(f32, f32)],
    relu: bool,
    y: &mut ImagesMut<'_>,
) {
    y.par_iter_mut().for_each(|(n, out)| {
        for (b, block_affine) in affine.chunks(LANES).enumerate() {
            let (mut scale, mut shift) = ([0f32; LANES], [0f32; LANES]);
            for (lane, &(a, c)) in block_affine.iter().enumerate() {
                (scale[lane], shift[lane]) = (a, c);
            }
            let out = &mut out[b * pixels * LANES..][..pixels * LANES];
            for (o, v) in out
                .chunks_exact_mut(LANES)
                .zip(block_plane(x, n, b, pixels).chunks_exact(LANES))
            {
                for lane in 0..LANES {
                    let y = v[lane] * scale[lane] + shift[lane];
                    o[lane] = if relu { y.max(0.0) } else { y };
                }
            }
        }
    });
}
