//! Max pooling on the blocked layout (`crate::blocked`): the 16 channels of a block are pooled together,
//! one vector per window position. Same semantics as [`super::pool::max_pool_forward`]: padding counts
//! as minus infinity, ties go to the first maximum in row-major window order, NaN propagates (the last
//! NaN of a window wins, as PyTorch's `val > max || isnan(val)` gives), and each argmax is the maximum's
//! index within its input plane, so the two layouts' argmaxes are equal.

use rayon::prelude::*;

use super::pool::{AvgPool2d, PoolGeometry, clipped};
use crate::blocked;
use crate::microkernel::LANES;
use crate::tensor::{Images, ImagesMut};

/// Max pooling of a batch of blocked images without halo into `y`, recording the argmaxes (one per
/// output value, in `y`'s layout).
pub fn max_pool_forward_blocked(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (in_plane, out_plane) = (g.h.input * g.w.input * LANES, g.h.output * g.w.output * LANES);
    let planes = g.batch * blocked::blocks(g.channels);
    assert_eq!(x.len(), planes * in_plane, "blocked max-pool input");
    assert_eq!(
        (y.len(), argmax.len()),
        (planes * out_plane, planes * out_plane),
        "blocked max-pool output"
    );
    if out_plane == 0 {
        return;
    }
    y.par_chunks_mut(out_plane)
        .zip(argmax.par_chunks_mut(out_plane))
        .zip(x.par_chunks(in_plane.max(1)))
        .for_each(|((y, argmax), x)| {
            crate::kernels::vectorize(Plane { g, x, y, argmax });
        });
}

/// One block plane, compiled for the best instruction set (the lane loops vectorize).
struct Plane<'a> {
    g: &'a PoolGeometry,
    x: &'a [f32],
    y: &'a mut [f32],
    argmax: &'a mut [u32],
}

impl pulp::WithSimd for Plane<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Plane { g, x, y, argmax } = self;
        for oy in 0..g.h.output {
            let rows = clipped(&g.h, oy);
            for ox in 0..g.w.output {
                let cols = clipped(&g.w, ox);
                let mut best = [f32::NEG_INFINITY; LANES];
                let mut best_at = [(rows.start * g.w.input + cols.start) as u32; LANES];
                for iy in rows.clone() {
                    for ix in cols.clone() {
                        let at = iy * g.w.input + ix;
                        let v: &[f32; LANES] = x[at * LANES..][..LANES].try_into().expect("one block");
                        for lane in 0..LANES {
                            let take = v[lane] > best[lane] || v[lane].is_nan();
                            best[lane] = if take { v[lane] } else { best[lane] };
                            best_at[lane] = if take { at as u32 } else { best_at[lane] };
                        }
                    }
                }
                let o = (oy * g.w.output + ox) * LANES;
                y[o..o + LANES].copy_from_slice(&best);
                argmax[o..o + LANES].copy_from_slice(&best_at);
            }
        }
    }
}

/// Adds the max-pool input gradient into `dx` (blocked, without halo): each output gradient goes to its
/// maximum's position, lane by lane.
pub fn max_pool_backward_blocked(g: &PoolGeometry, argmax: &[u32], dy: &[f32], dx: &mut [f32]) {
    let (in_plane, out_plane) = (g.h.input * g.w.input * LANES, g.h.output * g.w.output * LANES);
    let planes = g.batch * blocked::blocks(g.channels);
    assert_eq!(dx.len(), planes * in_plane, "blocked max-pool input gradient");
    assert_eq!(
        (dy.len(), argmax.len()),
        (planes * out_plane, planes * out_plane),
        "blocked max-pool output"
    );
    if out_plane == 0 || in_plane == 0 {
        return;
    }
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(argmax.par_chunks(out_plane)))
        .for_each(|(dx, (dy, argmax))| {
            for (i, (&d, &at)) in dy.iter().zip(argmax).enumerate() {
                dx[at as usize * LANES + i % LANES] += d;
            }
        });
}

/// Global average pooling of a batch of blocked images (without halo, `channels` channels on maps of
/// `pixels` pixels) into dense `[n][channels]` rows: the graph's exit from the blocked layout, as the
/// classifier reads plain rows. Each mean is summed in float64 in pixel order, as
/// [`super::pool::global_avg_pool_forward`] does, so both give the same bits.
pub fn global_avg_pool_forward_blocked(x: &[f32], channels: usize, pixels: usize, y: &mut [f32]) {
    let blocks = blocked::blocks(channels);
    let in_len = blocks * pixels * LANES;
    assert_eq!(x.len() % in_len.max(1), 0, "blocked global-average-pool input");
    assert_eq!(
        y.len(),
        x.len() / in_len.max(1) * channels,
        "dense [n][channels] output"
    );
    y.par_chunks_mut(channels.max(1))
        .zip(x.par_chunks(in_len.max(1)))
        .for_each(|(y, x)| {
            for (c, mean) in y.iter_mut().enumerate() {
                let (b, lane) = (c / LANES, c % LANES);
                let plane = &x[b * pixels * LANES..][..pixels * LANES];
                let sum: f64 = plane.iter().skip(lane).step_by(LANES).map(|&v| v as f64).sum();
                *mean = (sum / pixels as f64) as f32;
            }
        });
}

/// Adds the global-average-pool input gradient (`dy`: dense `[n][channels]`) into blocked `dx`; the
/// padding channels get nothing, so they stay zero.
pub fn global_avg_pool_backward_blocked(dy: &[f32], channels: usize, pixels: usize, dx: &mut [f32]) {
    let blocks = blocked::blocks(channels);
    let in_len = blocks * pixels * LANES;
    assert_eq!(
        dx.len() % in_len.max(1),
        0,
        "blocked global-average-pool input gradient"
    );
    assert_eq!(
        dy.len(),
        dx.len() / in_len.max(1) * channels,
        "dense [n][channels] output gradient"
    );
    let scale = 1.0 / pixels as f32;
    dx.par_chunks_mut(in_len.max(1))
        .zip(dy.par_chunks(channels.max(1)))
        .for_each(|(dx, dy)| {
            for (c, &d) in dy.iter().enumerate() {
                let (b, lane) = (c / LANES, c % LANES);
                let plane = &mut dx[b * pixels * LANES..][..pixels * LANES];
                plane.iter_mut().skip(lane).step_by(LANES).for_each(|v| *v += d * scale);
            }
        });
}

/// [`max_pool_forward_blocked`] on a batch of blocked images that need not lie one after another (an
/// executor's places): `g` holds the batch size, `argmax` one value per output value, dense.
pub fn max_pool_forward_blocked_images(g: &PoolGeometry, x: Images<'_>, y: &mut ImagesMut<'_>, argmax: &mut [u32]) {
    let one = PoolGeometry { batch: 1, ..*g };
    let len = y.len();
    y.par_iter_mut()
        .zip(argmax.par_chunks_mut(len.max(1)))
        .for_each(|((n, y), argmax)| max_pool_forward_blocked(&one, x.get(n), y, argmax));
}

/// [`max_pool_backward_blocked`] on a batch of blocked images (see
/// [`max_pool_forward_blocked_images`]).
pub fn max_pool_backward_blocked_images(g: &PoolGeometry, argmax: &[u32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
    let one = PoolGeometry { batch: 1, ..*g };
    let len = dy.len();
    dx.par_iter_mut()
        .zip(argmax.par_chunks(len.max(1)))
        .for_each(|((n, dx), argmax)| max_pool_backward_blocked(&one, argmax, dy.get(n), dx));
}

/// [`global_avg_pool_forward_blocked`] on a batch of images that need not lie one after another.
pub fn global_avg_pool_forward_blocked_images(x: Images<'_>, channels: usize, pixels: usize, y: &mut ImagesMut<'_>) {
    y.par_iter_mut()
        .for_each(|(n, y)| global_avg_pool_forward_blocked(x.get(n), channels, pixels, y));
}

/// [`global_avg_pool_backward_blocked`] on a batch of images that need not lie one after another.
pub fn global_avg_pool_backward_blocked_images(dy: Images<'_>, channels: usize, pixels: usize, dx: &mut ImagesMut<'_>) {
    dx.par_iter_mut()
        .for_each(|(n, dx)| global_avg_pool_backward_blocked(dy.get(n), channels, pixels, dx));
}

/// [`AvgPool2d::forward_images`] on blocked images: the same sums in the same order, 16 channels at a
/// time, so the same bits; padding channels stay zero.
pub fn avg_pool_forward_blocked_images(pool: &AvgPool2d, g: &PoolGeometry, x: Images<'_>, y: &mut ImagesMut<'_>) {
    pool.forward_pixels(g, x, y, LANES);
}

/// [`AvgPool2d::backward_images`] on blocked images: adds the input gradient into `dx`.
pub fn avg_pool_backward_blocked_images(pool: &AvgPool2d, g: &PoolGeometry, dy: Images<'_>, dx: &mut ImagesMut<'_>) {
    pool.backward_pixels(g, dy, dx, LANES);
}
