//! Max and average pooling with PyTorch's geometry (`ceil_mode`, padding per side, TF `SAME`), average
//! pooling with or without the padding in the divisor, and global average pooling.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::error::{Error, Result, expect_shape};
use crate::geometry::{Axis, Padding};
use crate::parallel::for_each_part;
use crate::tensor::{Images, ImagesMut, contiguous, dims4};
use crate::workspace::{Workspace, WorkspaceSize};

/// The most values one pixel of a pooled plane holds: the blocked layout's 16 channels.
const MAX_LANES: usize = crate::microkernel::LANES;

/// `with_padding` and `with_ceil_mode`, the same for both pools (they set fields of `self.window`).
macro_rules! window_setters {
    () => {
        /// Sets the padding.
        pub fn with_padding(mut self, padding: Padding) -> Self {
            self.window.padding = padding;
            self
        }

        /// Sets `ceil_mode`.
        pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
            self.window.ceil_mode = ceil_mode;
            self
        }
    };
}

/// The window shared by both pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolWindow {
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding rule (padding never wins a max and is counted in averages only if asked).
    pub padding: Padding,
    /// Round the output size up, as PyTorch's `ceil_mode=True`.
    pub ceil_mode: bool,
}

impl PoolWindow {
    /// An unpadded window rounding down.
    pub fn new(kernel: [usize; 2], stride: [usize; 2]) -> Self {
        PoolWindow {
            kernel,
            stride,
            padding: Padding::Valid,
            ceil_mode: false,
        }
    }

    /// Sets the padding.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Sets `ceil_mode`.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    /// Resolves the geometry for an input of shape `[n, c, h, w]`.
    pub fn geometry(&self, op: &str, input: [usize; 4]) -> Result<PoolGeometry> {
        let [batch, channels, h, w] = input;
        let p = self.padding.resolve([h, w], self.kernel, self.stride, [1, 1]);
        let h = Axis::new(
            op,
            h,
            self.kernel[0],
            self.stride[0],
            1,
            (p.top, p.bottom),
            self.ceil_mode,
        )?;
        let w = Axis::new(
            op,
            w,
            self.kernel[1],
            self.stride[1],
            1,
            (p.left, p.right),
            self.ceil_mode,
        )?;
        for a in [&h, &w] {
            if a.pad_lo >= a.kernel || a.pad_hi >= a.kernel {
                return Err(Error::config(
                    op,
                    format!(
                        "padding {}+{} must be smaller than the kernel {}, or a window would see only padding",
                        a.pad_lo, a.pad_hi, a.kernel
                    ),
                ));
            }
        }
        Ok(PoolGeometry { batch, channels, h, w })
    }
}

/// A pooling window resolved for one input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    /// Images.
    pub batch: usize,
    /// Channels.
    pub channels: usize,
    /// The vertical axis.
    pub h: Axis,
    /// The horizontal axis.
    pub w: Axis,
}

impl PoolGeometry {
    /// `[n, c, oh, ow]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.h.output, self.w.output]
    }

    /// `[n, c, h, w]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.h.input, self.w.input]
    }

    /// Values per input image.
    pub fn input_image_len(&self) -> usize {
        self.channels * self.h.input * self.w.input
    }

    /// Values per output image.
    pub fn output_image_len(&self) -> usize {
        self.channels * self.h.output * self.w.output
    }
}

/// The input positions window `o` covers along one axis, clipped to the real input.
pub(crate) fn clipped(a: &Axis, o: usize) -> std::ops::Range<usize> {
    let start = a.window_start(o);
    let end = (start + a.kernel as isize).min(a.input as isize);
    (start.max(0) as usize)..(end as usize)
}

/// Window size along one axis counting padding but not what lies beyond it (PyTorch's divisor).
fn padded_extent(a: &Axis, o: usize) -> usize {
    let start = a.window_start(o);
    let end = (start + a.kernel as isize).min((a.input + a.pad_hi) as isize);
    (end - start) as usize
}

/// Max pooling. Padding behaves as minus infinity; NaN propagates, as in PyTorch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    /// The window.
    pub window: PoolWindow,
}

/// What [`MaxPool2d::backward`] needs: where each maximum came from.
#[derive(Debug, Clone)]
pub struct MaxPoolCache {
    geometry: PoolGeometry,
    /// For each output, the index of its maximum within its input plane.
    argmax: Vec<u32>,
}

impl MaxPoolCache {
    /// For each output, the index of its maximum within its input plane.
    pub fn argmax(&self) -> &[u32] {
        &self.argmax
    }
}

impl MaxPool2d {
    /// A max pool with kernel and stride.
    pub fn new(kernel: [usize; 2], stride: [usize; 2]) -> Self {
        MaxPool2d {
            window: PoolWindow::new(kernel, stride),
        }
    }

    window_setters!();

    /// The output shape for `input`.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        Ok(self.window.geometry("max_pool2d", input)?.output_shape())
    }

    /// The pooled output and the argmax cache for backward.
    pub fn forward(&self, x: ArrayView4<f32>) -> Result<(Array4<f32>, MaxPoolCache)> {
        let g = self.window.geometry("max_pool2d", dims4(&x))?;
        if g.h.input * g.w.input > u32::MAX as usize {
            return Err(Error::config("max_pool2d", "an input plane of more than 2^32 pixels"));
        }
        let x = contiguous(&x);
        let mut y = Array4::zeros(g.output_shape());
        let mut argmax = vec![0u32; y.len()];
        let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
        let mut y_images = ImagesMut::dense(y_slice, g.batch, g.output_image_len());
        max_pool_forward(
            &g,
            Images::dense(&x, g.batch, g.input_image_len()),
            &mut y_images,
            &mut argmax,
            &mut Workspace::default(),
        );
        Ok((y, MaxPoolCache { geometry: g, argmax }))
    }

    /// The input gradient: each output's gradient goes to the input that was its maximum.
    pub fn backward(&self, cache: &MaxPoolCache, dy: ArrayView4<f32>) -> Result<Array4<f32>> {
        let g = &cache.geometry;
        expect_shape("max_pool2d output gradient", &g.output_shape(), dy.shape())?;
        let dy = contiguous(&dy);
        let mut dx = Array4::zeros(g.input_shape());
        let dx_slice = dx.as_slice_mut().expect("fresh arrays are contiguous");
        let mut dx_images = ImagesMut::dense(dx_slice, g.batch, g.input_image_len());
        max_pool_backward(
            g,
            &cache.argmax,
            Images::dense(&dy, g.batch, g.output_image_len()),
            &mut dx_images,
        );
        Ok(dx)
    }
}

/// Max pooling of a batch; `argmax` (one per output value, dense) records where each maximum came from
/// within its input plane. Scratch comes from `ws` (grown if [`max_pool_workspace`] was not reserved).
pub fn max_pool_forward(
    g: &PoolGeometry,
    x: Images<'_>,
    y: &mut ImagesMut<'_>,
    argmax: &mut [u32],
    ws: &mut Workspace,
) {
    let (in_plane, out_plane) = (g.h.input * g.w.input, g.h.output * g.w.output);
    if out_plane == 0 {
        return;
    }
    let out_len = g.output_image_len();
    let region_len = max_pool_scratch(g);
    let regions = ws.regions(region_len);
    let pool_images = |_, run: &mut [(usize, &mut [f32], &mut [u32])], scratch: &mut [f32], _| {
        for (n, y_img, arg_img) in run {
            let planes = x.get(*n).chunks_exact(in_plane).zip(y_img.chunks_exact_mut(out_plane));
            for ((x_plane, y_plane), arg_plane) in planes.zip(arg_img.chunks_exact_mut(out_plane)) {
                max_plane(g, x_plane, y_plane, arg_plane, scratch);
            }
        }
    };
    if crate::parallel::pieces_fill_threads(y.count()) {
        let mut images: Vec<_> = y
            .iter_mut()
            .zip(argmax.chunks_mut(out_len))
            .map(|((n, y_img), arg_img)| (n, y_img, arg_img))
            .collect();
        for_each_part(&mut images, 1, regions, region_len, pool_images);
    } else {
        // Fewer images than threads: the planes of each image are split across the pool instead.
        for ((n, y_img), arg_img) in y.iter_mut().zip(argmax.chunks_mut(out_len)) {
            let x_img = x.get(n);
            let mut planes: Vec<_> = y_img
                .chunks_exact_mut(out_plane)
                .zip(arg_img.chunks_exact_mut(out_plane))
                .enumerate()
                .collect();
            for_each_part(&mut planes, 1, regions, region_len, |_, run, scratch, _| {
                for (c, y_plane, arg_plane) in run.iter_mut().map(|(c, (y, a))| (*c, y, a)) {
                    max_plane(g, &x_img[c * in_plane..][..in_plane], y_plane, arg_plane, scratch);
                }
            });
        }
    }
}

/// The workspace [`max_pool_forward`] takes over `g`.
pub fn max_pool_workspace(g: &PoolGeometry) -> WorkspaceSize {
    WorkspaceSize::regions(max_pool_scratch(g))
}

/// Adds the max-pool input gradient into `dx`.
pub fn max_pool_backward(g: &PoolGeometry, argmax: &[u32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
    let (in_plane, out_plane) = (g.h.input * g.w.input, g.h.output * g.w.output);
    if in_plane == 0 || out_plane == 0 {
        return;
    }
    let out_len = g.output_image_len();
    dx.par_iter_mut().for_each(|(n, dx_img)| {
        let arg_img = &argmax[n * out_len..][..out_len];
        let planes = dx_img.chunks_exact_mut(in_plane).zip(dy.get(n).chunks_exact(out_plane));
        for ((dx_plane, dy_plane), arg_plane) in planes.zip(arg_img.chunks_exact(out_plane)) {
            for (&i, &d) in arg_plane.iter().zip(dy_plane) {
                dx_plane[i as usize] += d;
            }
        }
    });
}

/// One plane. Taps are visited in row-major window order with a strict `>`, so ties go to the first
/// maximum as in PyTorch; the inner loop runs over a whole output row for one tap, branch-free, so it
/// vectorizes.
fn max_plane(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], scratch: &mut [f32]) {
    struct Kernel<'a>(&'a PoolGeometry, &'a [f32], &'a mut [f32], &'a mut [u32], &'a mut [f32]);
    impl pulp::WithSimd for Kernel<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) {
            max_plane_inline(self.0, self.1, self.2, self.3, self.4)
        }
    }
    crate::kernels::vectorize(Kernel(g, x, y, argmax, scratch));
}

#[inline(always)]
fn max_plane_inline(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], scratch: &mut [f32]) {
    // The stride-1 path keeps winning taps as f32 (exact) in a table of at most 64 taps.
    let small = (g.h.output + g.h.kernel) * (g.w.output + g.w.kernel) < 1 << 24 && g.h.kernel * g.w.kernel <= 64;
    if g.h.stride == 1 && g.w.stride == 1 && g.h.dilation == 1 && g.w.dilation == 1 && small {
        return max_plane_stride1(g, x, y, argmax, scratch);
    }
    let (w_in, ow, sw, kw) = (g.w.input, g.w.output, g.w.stride, g.w.kernel);
    // Every window of a row lies within `span` padded columns.
    let span = (ow - 1) * sw + kw;
    if g.w.dilation != 1 || g.h.dilation != 1 {
        return max_plane_plain(g, x, y, argmax);
    }
    // One input row, padded with minus infinity and split into `sw` phases (`phases[p][i]` holds padded
    // column `i * sw + p`), so that tap `kx` of every window of the row is the contiguous run
    // `phases[kx % sw][kx / sw..][..ow]` and the loop over a row vectorizes.
    let phase_len = span.div_ceil(sw);
    let phases = &mut scratch[..phase_len * sw];
    for oy in 0..g.h.output {
        let rows = clipped(&g.h, oy);
        let y_row = &mut y[oy * ow..][..ow];
        let arg_row = &mut argmax[oy * ow..][..ow];
        for (ox, (best, at)) in y_row.iter_mut().zip(arg_row.iter_mut()).enumerate() {
            *best = f32::NEG_INFINITY;
            *at = (rows.start * w_in + clipped(&g.w, ox).start) as u32;
        }
        for iy in rows {
            let x_row = &x[iy * w_in..][..w_in];
            for p in 0..sw {
                for (i, slot) in phases[p * phase_len..][..phase_len].iter_mut().enumerate() {
                    let ix = (i * sw + p) as isize - g.w.pad_lo as isize;
                    *slot = if ix >= 0 && (ix as usize) < w_in {
                        x_row[ix as usize]
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
            for kx in 0..kw {
                let taps = &phases[(kx % sw) * phase_len + kx / sw..][..ow];
                // Input index of tap kx of window 0 (may be negative: such taps hold minus infinity
                // and never win, so their index is never stored).
                let base = (iy * w_in) as i64 + kx as i64 - g.w.pad_lo as i64;
                for (ox, ((&v, best), at)) in taps.iter().zip(y_row.iter_mut()).zip(arg_row.iter_mut()).enumerate() {
                    // PyTorch's rule: a NaN always takes over, so the last NaN of a window wins.
                    let take = v > *best || v.is_nan();
                    let index = (base + (ox * sw) as i64) as u32;
                    *best = if take { v } else { *best };
                    *at = if take { index } else { *at };
                }
            }
        }
    }
}

/// Stride 1 (the Inception pool branches): the plane is padded with minus infinity once, and outputs
/// are computed on the padded width, so each tap `(ky, kx)` of every window is one contiguous run of
/// the padded plane and the whole plane takes `kh·kw` long vectorized passes instead of short row
/// loops.
#[inline(always)]
fn max_plane_stride1(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32], scratch: &mut [f32]) {
    let (h, w, oh, ow) = (g.h.input, g.w.input, g.h.output, g.w.output);
    let (kh, kw) = (g.h.kernel, g.w.kernel);
    let (top, left) = (g.h.pad_lo, g.w.pad_lo);
    let (hp, wp) = (oh + kh - 1, ow + kw - 1);
    // Outputs on the padded width: q = oy·wp + ox, of which columns ox >= ow are discarded.
    let n = (oh - 1) * wp + ow;
    let (padded, rest) = scratch.split_at_mut(hp * wp);
    let (best, at) = rest.split_at_mut(n);
    // Window indices are kept as f32 (the caller checked they are exact).
    let at = &mut at[..n];
    padded.fill(f32::NEG_INFINITY);
    best.fill(f32::NEG_INFINITY);
    for r in top..(top + h).min(hp) {
        let cols = left..(left + w).min(wp);
        padded[r * wp..][cols.clone()].copy_from_slice(&x[(r - top) * w..][..cols.len()]);
    }
    // Outputs on the padded width: q = oy·wp + ox, of which columns ox >= ow are discarded.
    // `at[q]` is the winning tap `ky·kw + kx` of window q (tap 0 until one wins).
    at.fill(0.0);
    let mut tap_offsets = [(0usize, 0usize); 64];
    for ky in 0..kh {
        for kx in 0..kw {
            let tap = ky * kw + kx;
            tap_offsets[tap] = (ky, kx);
            let taps = &padded[ky * wp + kx..][..n];
            for ((&v, b), a) in taps.iter().zip(best.iter_mut()).zip(at.iter_mut()) {
                // PyTorch's rule: a NaN always takes over, so the last NaN of a window wins.
                let take = v > *b || v.is_nan();
                *b = if take { v } else { *b };
                *a = if take { tap as f32 } else { *a };
            }
        }
    }
    for oy in 0..oh {
        for ox in 0..ow {
            let q = oy * wp + ox;
            y[oy * ow + ox] = best[q];
            // Back from the padded plane to the input plane; a window that never rose above minus
            // infinity points at its first real element, as the other paths do.
            let (ky, kx) = tap_offsets[at[q] as usize];
            let (r, c) = (oy + ky, ox + kx);
            let real = (top..top + h).contains(&r) && (left..left + w).contains(&c);
            argmax[oy * ow + ox] = if real {
                ((r - top) * w + c - left) as u32
            } else {
                (clipped(&g.h, oy).start * w + clipped(&g.w, ox).start) as u32
            };
        }
    }
}

/// Scratch one max-pool plane takes.
fn max_pool_scratch(g: &PoolGeometry) -> usize {
    let (oh, ow) = (g.h.output.max(1), g.w.output.max(1));
    if g.h.stride == 1 && g.w.stride == 1 {
        let (hp, wp) = (oh + g.h.kernel - 1, ow + g.w.kernel - 1);
        hp * wp + 2 * ((oh - 1) * wp + ow)
    } else {
        let span = (ow - 1) * g.w.stride + g.w.kernel;
        span.div_ceil(g.w.stride) * g.w.stride
    }
}

/// The same maximum by plain loops over each window (rows too wide for the fast path's buffer, or
/// dilated windows).
fn max_plane_plain(g: &PoolGeometry, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    for oy in 0..g.h.output {
        let rows = clipped(&g.h, oy);
        for ox in 0..g.w.output {
            let cols = clipped(&g.w, ox);
            let (mut best, mut best_at) = (f32::NEG_INFINITY, rows.start * g.w.input + cols.start);
            for iy in rows.clone() {
                for ix in cols.clone() {
                    let v = x[iy * g.w.input + ix];
                    if v > best || v.is_nan() {
                        (best, best_at) = (v, iy * g.w.input + ix);
                    }
                }
            }
            y[oy * g.w.output + ox] = best;
            argmax[oy * g.w.output + ox] = best_at as u32;
        }
    }
}

/// Average pooling. With `count_include_pad` (PyTorch's default) padded pixels count in the divisor;
/// without it (TF `SAME`) only real pixels do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    /// The window.
    pub window: PoolWindow,
    /// Whether padding counts in the divisor.
    pub count_include_pad: bool,
}

impl AvgPool2d {
    /// An average pool with kernel and stride, counting padding as PyTorch does by default.
    pub fn new(kernel: [usize; 2], stride: [usize; 2]) -> Self {
        AvgPool2d {
            window: PoolWindow::new(kernel, stride),
            count_include_pad: true,
        }
    }

    window_setters!();

    /// Sets whether padding counts in the divisor.
    pub fn with_count_include_pad(mut self, count: bool) -> Self {
        self.count_include_pad = count;
        self
    }

    /// The output shape for `input`.
    pub fn output_shape(&self, input: [usize; 4]) -> Result<[usize; 4]> {
        Ok(self.window.geometry("avg_pool2d", input)?.output_shape())
    }

    /// The divisor of output `(oy, ox)`.
    pub(crate) fn divisor(&self, g: &PoolGeometry, oy: usize, ox: usize) -> f32 {
        let count = if self.count_include_pad {
            padded_extent(&g.h, oy) * padded_extent(&g.w, ox)
        } else {
            clipped(&g.h, oy).len() * clipped(&g.w, ox).len()
        };
        count as f32
    }

    /// The pooled output.
    pub fn forward(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        let g = self.window.geometry("avg_pool2d", dims4(&x))?;
        let x = contiguous(&x);
        let mut y = Array4::zeros(g.output_shape());
        let y_slice = y.as_slice_mut().expect("fresh arrays are contiguous");
        let mut y_images = ImagesMut::dense(y_slice, g.batch, g.output_image_len());
        self.forward_images(&g, Images::dense(&x, g.batch, g.input_image_len()), &mut y_images);
        Ok(y)
    }

    /// The input gradient for an input of shape `input_shape`.
    pub fn backward(&self, dy: ArrayView4<f32>, input_shape: [usize; 4]) -> Result<Array4<f32>> {
        let g = self.window.geometry("avg_pool2d", input_shape)?;
        expect_shape("avg_pool2d output gradient", &g.output_shape(), dy.shape())?;
        let dy = contiguous(&dy);
        let mut dx = Array4::zeros(input_shape);
        let dx_slice = dx.as_slice_mut().expect("fresh arrays are contiguous");
        let mut dx_images = ImagesMut::dense(dx_slice, g.batch, g.input_image_len());
        self.backward_images(&g, Images::dense(&dy, g.batch, g.output_image_len()), &mut dx_images);
        Ok(dx)
    }

    /// Average pooling of a batch into `y`.
    pub fn forward_images(&self, g: &PoolGeometry, x: Images<'_>, y: &mut ImagesMut<'_>) {
        self.forward_pixels(g, x, y, 1);
    }

    /// [`AvgPool2d::forward_images`] on planes whose pixels are `lanes` values each (1 for NCHW, 16
    /// for the blocked layout), every lane summed alone in the same order.
    pub(crate) fn forward_pixels(&self, g: &PoolGeometry, x: Images<'_>, y: &mut ImagesMut<'_>, lanes: usize) {
        if g.h.output * g.w.output == 0 {
            return;
        }
        // One image on each task, its planes compiled for the best instruction set with the lanes a
        // constant (16 on the blocked layout), so each pixel's lanes are one vector: the same sums in
        // the same order as lane by lane.
        y.par_iter_mut().for_each(|(n, y_img)| match lanes {
            1 => crate::kernels::vectorize(AvgForward::<1> {
                pool: self,
                g,
                x: x.get(n),
                y: y_img,
            }),
            MAX_LANES => crate::kernels::vectorize(AvgForward::<MAX_LANES> {
                pool: self,
                g,
                x: x.get(n),
                y: y_img,
            }),
            _ => unreachable!("pixels of 1 or 16 values"),
        });
    }

    /// Adds the average-pool input gradient into `dx`.
    pub fn backward_images(&self, g: &PoolGeometry, dy: Images<'_>, dx: &mut ImagesMut<'_>) {
        self.backward_pixels(g, dy, dx, 1);
    }

    /// [`AvgPool2d::backward_images`] on planes whose pixels are `lanes` values each.
    pub(crate) fn backward_pixels(&self, g: &PoolGeometry, dy: Images<'_>, dx: &mut ImagesMut<'_>, lanes: usize) {
        if g.h.input * g.w.input == 0 || g.h.output * g.w.output == 0 {
            return;
        }
        // As the forward pass: one image per task, the lanes a constant.
        dx.par_iter_mut().for_each(|(n, dx_img)| match lanes {
            1 => crate::kernels::vectorize(AvgBackward::<1> {
                pool: self,
                g,
                dy: dy.get(n),
                dx: dx_img,
            }),
            MAX_LANES => crate::kernels::vectorize(AvgBackward::<MAX_LANES> {
                pool: self,
                g,
                dy: dy.get(n),
                dx: dx_img,
            }),
            _ => unreachable!("pixels of 1 or 16 values"),
        });
    }
}

/// One image of [`AvgPool2d::forward_pixels`], pixels of `L` values.
struct AvgForward<'a, const L: usize> {
    pool: &'a AvgPool2d,
    g: &'a PoolGeometry,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl<const L: usize> pulp::WithSimd for AvgForward<'_, L> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let AvgForward { pool, g, x, y } = self;
        let (in_plane, out_plane) = (g.h.input * g.w.input * L, g.h.output * g.w.output * L);
        for (x_plane, y_plane) in x.chunks_exact(in_plane).zip(y.chunks_exact_mut(out_plane)) {
            for oy in 0..g.h.output {
                for ox in 0..g.w.output {
                    let mut sum = [0.0f32; L];
                    for iy in clipped(&g.h, oy) {
                        let mut row = [0.0f32; L];
                        for ix in clipped(&g.w, ox) {
                            let v: &[f32; L] = x_plane[(iy * g.w.input + ix) * L..][..L].try_into().expect("a pixel");
                            row.iter_mut().zip(v).for_each(|(r, &v)| *r += v);
                        }
                        sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
                    }
                    let divisor = pool.divisor(g, oy, ox);
                    let out = &mut y_plane[(oy * g.w.output + ox) * L..][..L];
                    out.iter_mut().zip(sum).for_each(|(o, s)| *o = s / divisor);
                }
            }
        }
    }
}

/// One image of [`AvgPool2d::backward_pixels`], pixels of `L` values.
struct AvgBackward<'a, const L: usize> {
    pool: &'a AvgPool2d,
    g: &'a PoolGeometry,
    dy: &'a [f32],
    dx: &'a mut [f32],
}

impl<const L: usize> pulp::WithSimd for AvgBackward<'_, L> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let AvgBackward { pool, g, dy, dx } = self;
        let (in_plane, out_plane) = (g.h.input * g.w.input * L, g.h.output * g.w.output * L);
        for (dx_plane, dy_plane) in dx.chunks_exact_mut(in_plane).zip(dy.chunks_exact(out_plane)) {
            for oy in 0..g.h.output {
                for ox in 0..g.w.output {
                    let divisor = pool.divisor(g, oy, ox);
                    let d: &[f32; L] = dy_plane[(oy * g.w.output + ox) * L..][..L].try_into().expect("a pixel");
                    let mut share = [0.0f32; L];
                    share.iter_mut().zip(d).for_each(|(s, &d)| *s = d / divisor);
                    for iy in clipped(&g.h, oy) {
                        for ix in clipped(&g.w, ox) {
                            let out = &mut dx_plane[(iy * g.w.input + ix) * L..][..L];
                            out.iter_mut().zip(share).for_each(|(o, s)| *o += s);
                        }
                    }
                }
            }
        }
    }
}

/// Global average pooling: `[n, c, h, w] -> [n, c, 1, 1]`, PyTorch's `AdaptiveAvgPool2d(1)`.
pub fn global_avg_pool(x: ArrayView4<f32>) -> Result<Array4<f32>> {
    let [n, c, h, w] = dims4(&x);
    if h * w == 0 {
        return Err(Error::shape(
            "global_avg_pool",
            "a non-empty feature map",
            format!("{:?}", x.shape()),
        ));
    }
    let x = contiguous(&x);
    let mut y = Array4::zeros([n, c, 1, 1]);
    let mut y_images = ImagesMut::dense(y.as_slice_mut().expect("fresh arrays are contiguous"), n, c);
    global_avg_pool_forward(Images::dense(&x, n, c * h * w), h * w, &mut y_images);
    Ok(y)
}

/// The gradient of [`global_avg_pool`]: each pixel receives `dy / (h * w)`.
pub fn global_avg_pool_backward(dy: ArrayView4<f32>, input_shape: [usize; 4]) -> Result<Array4<f32>> {
    let [n, c, h, w] = input_shape;
    expect_shape("global_avg_pool output gradient", &[n, c, 1, 1], dy.shape())?;
    let dy = contiguous(&dy);
    let mut dx = Array4::zeros(input_shape);
    let mut dx_images = ImagesMut::dense(dx.as_slice_mut().expect("fresh arrays are contiguous"), n, c * h * w);
    global_avg_pool_backward_images(Images::dense(&dy, n, c), h * w, &mut dx_images);
    Ok(dx)
}

/// Global average pooling of a batch: one mean per plane of `pixels` values.
pub fn global_avg_pool_forward(x: Images<'_>, pixels: usize, y: &mut ImagesMut<'_>) {
    y.par_iter_mut().for_each(|(n, y_img)| {
        for (mean, plane) in y_img.iter_mut().zip(x.get(n).chunks_exact(pixels)) {
            *mean = (plane.iter().map(|&v| v as f64).sum::<f64>() / pixels as f64) as f32;
        }
    });
}

/// Adds the global-average-pool input gradient into `dx`.
pub fn global_avg_pool_backward_images(dy: Images<'_>, pixels: usize, dx: &mut ImagesMut<'_>) {
    let scale = 1.0 / pixels as f32;
    dx.par_iter_mut().for_each(|(n, dx_img)| {
        for (plane, &d) in dx_img.chunks_exact_mut(pixels).zip(dy.get(n)) {
            plane.iter_mut().for_each(|v| *v += d * scale);
        }
    });
}

/// PyTorch's adaptive-pooling bins along one axis: output `i` averages inputs
/// `floor(i * input / output) .. ceil((i + 1) * input / output)` (bins may overlap or differ in size).
pub fn adaptive_bins(input: usize, output: usize) -> Vec<std::ops::Range<usize>> {
    (0..output)
        .map(|i| i * input / output..((i + 1) * input).div_ceil(output))
        .collect()
}

/// Adaptive average pooling of a batch of `[c, h, w]` images to `[c, oh, ow]` (PyTorch's
/// `AdaptiveAvgPool2d((oh, ow))`).
pub fn adaptive_avg_pool_forward(x: Images<'_>, [h, w]: [usize; 2], [oh, ow]: [usize; 2], y: &mut ImagesMut<'_>) {
    let (rows, cols) = (adaptive_bins(h, oh), adaptive_bins(w, ow));
    y.par_iter_mut().for_each(|(n, y_img)| {
        for (plane, out) in x.get(n).chunks_exact(h * w).zip(y_img.chunks_exact_mut(oh * ow)) {
            for (oy, r) in rows.iter().enumerate() {
                for (ox, c) in cols.iter().enumerate() {
                    let sum: f64 = r
                        .clone()
                        .map(|iy| {
                            plane[iy * w + c.start..iy * w + c.end]
                                .iter()
                                .map(|&v| v as f64)
                                .sum::<f64>()
                        })
                        .sum();
                    out[oy * ow + ox] = (sum / (r.len() * c.len()) as f64) as f32;
                }
            }
        }
    });
}

/// Adds the adaptive-average-pool input gradient into `dx`.
pub fn adaptive_avg_pool_backward_images(
    dy: Images<'_>,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    dx: &mut ImagesMut<'_>,
) {
    let (rows, cols) = (adaptive_bins(h, oh), adaptive_bins(w, ow));
    dx.par_iter_mut().for_each(|(n, dx_img)| {
        for (plane, d) in dx_img.chunks_exact_mut(h * w).zip(dy.get(n).chunks_exact(oh * ow)) {
            for (oy, r) in rows.iter().enumerate() {
                for (ox, c) in cols.iter().enumerate() {
                    let share = d[oy * ow + ox] / (r.len() * c.len()) as f32;
                    for iy in r.clone() {
                        plane[iy * w + c.start..iy * w + c.end]
                            .iter_mut()
                            .for_each(|v| *v += share);
                    }
                }
            }
        }
    });
}

/// [`adaptive_avg_pool_forward`] on an ndarray batch.
pub fn adaptive_avg_pool(x: ArrayView4<f32>, output: [usize; 2]) -> Result<Array4<f32>> {
    let [n, c, h, w] = dims4(&x);
    if output.contains(&0) || output[0] > h || output[1] > w {
        return Err(Error::shape(
            "adaptive_avg_pool2d output size",
            format!("1 to [{h}, {w}] (the input size)"),
            format!("{output:?}"),
        ));
    }
    let xs = contiguous(&x);
    let mut y = Array4::zeros([n, c, output[0], output[1]]);
    let mut y_images = ImagesMut::dense(
        y.as_slice_mut().expect("fresh arrays are contiguous"),
        n,
        c * output[0] * output[1],
    );
    adaptive_avg_pool_forward(Images::dense(&xs, n, c * h * w), [h, w], output, &mut y_images);
    Ok(y)
}

/// The input gradient of [`adaptive_avg_pool`].
pub fn adaptive_avg_pool_backward(dy: ArrayView4<f32>, input_shape: [usize; 4]) -> Result<Array4<f32>> {
    let [n, c, h, w] = input_shape;
    let [_, _, oh, ow] = dims4(&dy);
    expect_shape("adaptive_avg_pool2d output gradient", &[n, c, oh, ow], dy.shape())?;
    let dys = contiguous(&dy);
    let mut dx = Array4::zeros(input_shape);
    let mut dx_images = ImagesMut::dense(dx.as_slice_mut().expect("fresh arrays are contiguous"), n, c * h * w);
    adaptive_avg_pool_backward_images(Images::dense(&dys, n, c * oh * ow), [h, w], [oh, ow], &mut dx_images);
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pool_ties_go_to_the_first_maximum_and_the_last_nan_wins() {
        // One 2x4 plane, 2x2 windows at stride 2: [1 3 | nan 5]
        //                                         [3 0 | 7 nan]
        let x = Array4::from_shape_vec([1, 1, 2, 4], vec![1.0, 3.0, f32::NAN, 5.0, 3.0, 0.0, 7.0, f32::NAN]).unwrap();
        let pool = MaxPool2d::new([2, 2], [2, 2]);
        let (y, cache) = pool.forward(x.view()).unwrap();
        assert_eq!(y[[0, 0, 0, 0]], 3.0);
        assert!(y[[0, 0, 0, 1]].is_nan());
        // The 3 at (0,1) comes before the 3 at (1,0); the NaNs are at (0,2) and (1,3), and PyTorch's
        // kernel (`val > maxval || isnan(val)`) keeps the last.
        assert_eq!(cache.argmax, [1, 7]);
    }

    #[test]
    fn adaptive_bins_are_pytorchs() {
        // 14 -> 4 (torchvision GoogLeNet's auxiliary heads at 224x224): overlapping bins of 4.
        assert_eq!(adaptive_bins(14, 4), [0..4, 3..7, 7..11, 10..14]);
        assert_eq!(adaptive_bins(5, 3), [0..2, 1..4, 3..5]);
        assert_eq!(adaptive_bins(8, 8), (0..8).map(|i| i..i + 1).collect::<Vec<_>>());
        let x = Array4::from_shape_fn([1, 1, 5, 3], |(_, _, i, j)| (i * 3 + j) as f32);
        let y = adaptive_avg_pool(x.view(), [3, 1]).unwrap();
        // Rows 0-1, 1-3, 3-4 averaged over all 3 columns.
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), [2.5, 7.0, 11.5]);
    }
}
