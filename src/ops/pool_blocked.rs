//! Max pooling on the blocked layout (`crate::blocked`): the 16 channels of a block are pooled together,
//! one vector per window position. Same semantics as [`super::pool::max_pool_forward`]: padding counts
//! as minus infinity, ties go to the first maximum in row-major window order, NaN propagates (the last
//! NaN of a window wins, as PyTorch's `val > max || isnan(val)` gives), and each argmax is the maximum's
//! index within its input plane, so the two layouts' argmaxes are equal.
//!
//! The executor keeps *offsets* instead of argmaxes on this layout: per output value, the maximum's
//! distance in pixels from its window's corner (padding included) in a u16, half a u32 argmax's memory
//! (googlenet-d2l's training at batch 128: 67 MB, not 134). Windows that span 65,536 pixels or more
//! of their input keep argmaxes ([`offsets_fit`]).

use rayon::iter::Either;
use rayon::prelude::*;

use super::pool::{AvgPool2d, PoolGeometry, clipped};
use crate::blocked;
use crate::microkernel::LANES;
use crate::tensor::{Images, ImagesMut};

/// Max pooling of a batch of blocked images without halo into `y`, recording the argmaxes (one per
/// output value, in `y`'s layout).
pub fn max_pool_forward_blocked(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    forward_recording(g, x, y, Record::Argmax(argmax));
}

/// Max pooling of blocked planes, keeping `record` for the backward pass (one value per output).
fn forward_recording(g: &PoolGeometry, x: &[f32], y: &mut [f32], record: Record<'_>) {
    let (in_plane, out_plane) = (g.h.input * g.w.input * LANES, g.h.output * g.w.output * LANES);
    let planes = g.batch * blocked::blocks(g.channels);
    assert_eq!(x.len(), planes * in_plane, "blocked max-pool input");
    let recorded = match &record {
        Record::Argmax(argmax) => argmax.len(),
        Record::Offsets(offsets) => offsets.len(),
    };
    assert_eq!(
        (y.len(), recorded),
        (planes * out_plane, planes * out_plane),
        "blocked max-pool output"
    );
    if out_plane == 0 {
        return;
    }
    let records = match record {
        Record::Argmax(argmax) => Either::Left(argmax.par_chunks_mut(out_plane).map(Record::Argmax)),
        Record::Offsets(offsets) => Either::Right(offsets.par_chunks_mut(out_plane).map(Record::Offsets)),
    };
    y.par_chunks_mut(out_plane)
        .zip(records)
        .zip(x.par_chunks(in_plane.max(1)))
        .for_each(|((y, record), x)| crate::kernels::vectorize(Plane { g, x, y, record }));
}

/// Whether the distance from a max-pool window's corner to its farthest pixel fits a u16
/// ([`max_pool_forward_blocked_offsets`]).
pub fn offsets_fit(g: &PoolGeometry) -> bool {
    (g.h.kernel.max(1) - 1) * g.w.input + g.w.kernel < 1 << 16
}

/// [`max_pool_forward_blocked`] recording each maximum's offset from its window's corner (in pixels of
/// the input plane, padding counted) in a u16 instead of its argmax. Panics unless [`offsets_fit`].
pub fn max_pool_forward_blocked_offsets(g: &PoolGeometry, x: &[f32], y: &mut [f32], offsets: &mut [u16]) {
    assert!(offsets_fit(g), "max-pool windows span more than 65,535 pixels");
    forward_recording(g, x, y, Record::Offsets(offsets));
}

/// Where a window's corner (its first tap, padding counted) lies in the input plane, in pixels: the
/// origin of [`max_pool_forward_blocked_offsets`]' offsets.
fn corner(g: &PoolGeometry, oy: usize, ox: usize) -> isize {
    g.h.window_start(oy) * g.w.input as isize + g.w.window_start(ox)
}

/// What a forward pass keeps of where each maximum was.
enum Record<'a> {
    /// Its index within the input plane.
    Argmax(&'a mut [u32]),
    /// Its offset from its window's corner.
    Offsets(&'a mut [u16]),
}

/// One block plane, compiled for the best instruction set (the lane loops vectorize).
struct Plane<'a> {
    g: &'a PoolGeometry,
    x: &'a [f32],
    y: &'a mut [f32],
    record: Record<'a>,
}

impl pulp::WithSimd for Plane<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Plane { g, x, y, mut record } = self;
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
                match &mut record {
                    Record::Argmax(argmax) => argmax[o..o + LANES].copy_from_slice(&best_at),
                    Record::Offsets(offsets) => {
                        // Within the window, so at most `offsets_fit`'s bound from its corner.
                        let corner = corner(g, oy, ox);
                        for (out, &at) in offsets[o..o + LANES].iter_mut().zip(&best_at) {
                            *out = (at as isize - corner) as u16;
                        }
                    }
                }
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

/// [`max_pool_backward_blocked`] from the offsets [`max_pool_forward_blocked_offsets`] recorded: the
/// same positions, added in the same order, so the same bits.
pub fn max_pool_backward_blocked_offsets(g: &PoolGeometry, offsets: &[u16], dy: &[f32], dx: &mut [f32]) {
    let (in_plane, out_plane) = (g.h.input * g.w.input * LANES, g.h.output * g.w.output * LANES);
    let planes = g.batch * blocked::blocks(g.channels);
    assert_eq!(dx.len(), planes * in_plane, "blocked max-pool input gradient");
    assert_eq!(
        (dy.len(), offsets.len()),
        (planes * out_plane, planes * out_plane),
        "blocked max-pool output"
    );
    if out_plane == 0 || in_plane == 0 {
        return;
    }
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(offsets.par_chunks(out_plane)))
        .for_each(|(dx, (dy, offsets))| {
            for oy in 0..g.h.output {
                for ox in 0..g.w.output {
                    let (corner, o) = (corner(g, oy, ox), (oy * g.w.output + ox) * LANES);
                    for lane in 0..LANES {
                        let at = (corner + offsets[o + lane] as isize) as usize;
                        dx[at * LANES + lane] += dy[o + lane];
                    }
                }
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

/// [`max_pool_forward_blocked_offsets`] on a batch of blocked images that need not lie one after
/// another.
pub fn max_pool_forward_blocked_offsets_images(
    g: &PoolGeometry,
    x: Images<'_>,
    y: &mut ImagesMut<'_>,
    offsets: &mut [u16],
) {
    let one = PoolGeometry { batch: 1, ..*g };
    let len = y.len();
    y.par_iter_mut()
        .zip(offsets.par_chunks_mut(len.max(1)))
        .for_each(|((n, y), offsets)| max_pool_forward_blocked_offsets(&one, x.get(n), y, offsets));
}

/// [`max_pool_backward_blocked_offsets`] on a batch of blocked images that need not lie one after
/// another.
pub fn max_pool_backward_blocked_offsets_images(
    g: &PoolGeometry,
    offsets: &[u16],
    dy: Images<'_>,
    dx: &mut ImagesMut<'_>,
) {
    let one = PoolGeometry { batch: 1, ..*g };
    let len = dy.len();
    dx.par_iter_mut()
        .zip(offsets.par_chunks(len.max(1)))
        .for_each(|((n, dx), offsets)| max_pool_backward_blocked_offsets(&one, offsets, dy.get(n), dx));
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
