//! Factorized convolutions, `k×1` and `1×k` (Inception-v3's 1×7/7×1 and 1×3/3×1), without an im2col
//! matrix: the convolution is `k` accumulating GEMMs, one per tap, each reading the same padded copy of
//! the input shifted by one row.
//!
//! For a `k×1` kernel (along the rows), the input of a chunk of `n` images is copied into a buffer
//! `[channel][padded row][image][column]`, zero rows above and below. Tap `t` then reads, for every output
//! pixel of every image, the value `t` rows further down: a plain matrix `[channels, rows·n·columns]` that
//! starts `t` rows into the buffer, with rows one padded plane apart. So
//! `Y[out, pixels] = Σ_t W_t[out, in] · X_t[in, pixels]` needs no copy per tap. The output comes out
//! `[out][row][image][column]`: for a lone image that is the image itself, written in place.
//!
//! A `1×k` kernel is the same computation on transposed planes (`[channel][padded column][image][row]`);
//! the transposes are folded into the copies in and out, which cost `O(pixels·channels)` next to the
//! GEMMs' `O(pixels·channels·out·k)`.
//!
//! The input gradient runs the taps the other way (`dX_t += W_tᵀ · dY`, each tap adding into the padded
//! buffer `t` rows down), and the weight gradient is `dW_t += dY · X_tᵀ`.

use crate::geometry::Axis;
use crate::matmul::{MatMut, MatRef, matmul};
use crate::ops::conv::batching::{Chunking, accumulate_weight_grad, for_each_chunk, weight_grad_workspace};
use crate::ops::conv::{ConvGeometry, Fused, GradOperands, Operands};
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

/// Whether `g` is a `k×1` or `1×k` convolution (`k > 1`) with stride 1 and no dilation, and no padding
/// along its unit axis.
pub(in crate::ops::conv) fn eligible(g: &ConvGeometry) -> bool {
    let unit = |a: &Axis| a.kernel == 1 && a.stride == 1 && a.pad_lo == 0 && a.pad_hi == 0;
    let long = |a: &Axis| a.kernel > 1 && a.stride == 1 && a.dilation == 1;
    (long(&g.h) && unit(&g.w)) || (unit(&g.h) && long(&g.w))
}

/// The chunk buffers' geometry: "long" is the kernel's axis, "short" the other one.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The kernel runs along the columns (`1×k`), so planes are transposed in the buffers.
    transposed: bool,
    taps: usize,
    long_in: usize,
    long_out: usize,
    pad_lo: usize,
    /// Rows of the padded buffer: `long_out + taps - 1`.
    padded: usize,
    short: usize,
    in_channels: usize,
    out_channels: usize,
}

impl Layout {
    fn new(g: &ConvGeometry) -> Layout {
        let transposed = g.h.kernel == 1;
        let (long, short) = if transposed { (&g.w, &g.h) } else { (&g.h, &g.w) };
        Layout {
            transposed,
            taps: long.kernel,
            long_in: long.input,
            long_out: long.output,
            pad_lo: long.pad_lo,
            padded: long.output + long.kernel - 1,
            short: short.input,
            in_channels: g.in_channels,
            out_channels: g.out_channels,
        }
    }

    /// Values per padded input buffer for a chunk of `n` images.
    fn input_len(&self, n: usize) -> usize {
        self.in_channels * self.padded * n * self.short
    }

    /// Values per output buffer for a chunk of `n` images.
    fn output_len(&self, n: usize) -> usize {
        self.out_channels * self.long_out * n * self.short
    }

    /// Tap `t`'s weights as an `[out, in]` matrix inside the `[out, in, kh, kw]` weight.
    fn tap_weights<'w>(&self, w: &'w [f32], t: usize) -> MatRef<'w> {
        let (o, c, k) = (self.out_channels, self.in_channels, self.taps);
        MatRef::strided(&w[t..], o, c, c * k, k)
    }

    /// What tap `t` reads from the padded input buffer of `n` images: `[in, output pixels]`.
    fn tap_input<'x>(&self, x: &'x [f32], n: usize, t: usize) -> MatRef<'x> {
        let row = n * self.short;
        MatRef::strided(
            &x[t * row..],
            self.in_channels,
            self.long_out * row,
            self.padded * row,
            1,
        )
    }

    /// Copies images `first..first + n` into the padded buffer `[in][padded][n][short]`.
    fn pack_input(&self, x: Images<'_>, first: usize, n: usize, buf: &mut [f32]) {
        let (row, short, long) = (n * self.short, self.short, self.long_in);
        for (c, plane) in buf[..self.input_len(n)].chunks_exact_mut(self.padded * row).enumerate() {
            plane[..self.pad_lo * row].fill(0.0);
            plane[(self.pad_lo + long) * row..].fill(0.0);
            for j in 0..n {
                let src = &x.get(first + j)[c * long * short..][..long * short];
                let dst = &mut plane[self.pad_lo * row + j * short..];
                if self.transposed {
                    for (s, src_row) in src.chunks_exact(long).enumerate() {
                        for (l, &v) in src_row.iter().enumerate() {
                            dst[l * row + s] = v;
                        }
                    }
                } else {
                    for (l, src_row) in src.chunks_exact(short).enumerate() {
                        dst[l * row..][..short].copy_from_slice(src_row);
                    }
                }
            }
        }
    }

    /// Calls `f(buffer index, image, index in that image)` over every output value of a chunk's
    /// `[out][long_out][n][short]` buffer, image-contiguous runs first.
    fn for_each_output(&self, n: usize, mut f: impl FnMut(std::ops::Range<usize>, usize, usize, usize)) {
        let (short, long, row) = (self.short, self.long_out, n * self.short);
        for o in 0..self.out_channels {
            for l in 0..long {
                for j in 0..n {
                    let at = (o * long + l) * row + j * short;
                    if self.transposed {
                        // Image index of (o, s, l) is o*short*long + s*long + l: stride `long` over s.
                        f(at..at + short, j, o * short * long + l, long);
                    } else {
                        f(at..at + short, j, (o * long + l) * short, 1);
                    }
                }
            }
        }
    }

    /// Copies a chunk's output buffer into its images.
    fn unpack_output(&self, buf: &[f32], images: &mut [&mut [f32]]) {
        self.for_each_output(images.len(), |run, j, start, step| {
            let dst = images[j][start..].iter_mut().step_by(step);
            dst.zip(&buf[run]).for_each(|(d, &s)| *d = s);
        });
    }

    /// Copies images `first..first + n` of `dy` into an output-shaped buffer.
    fn pack_output_grad(&self, dy: Images<'_>, first: usize, n: usize, buf: &mut [f32]) {
        self.for_each_output(n, |run, j, start, step| {
            let src = dy.get(first + j)[start..].iter().step_by(step);
            buf[run].iter_mut().zip(src).for_each(|(d, &s)| *d = s);
        });
    }

    /// Adds the interior of a padded input-gradient buffer onto the images' gradients.
    fn unpack_input_grad(&self, buf: &[f32], images: &mut [&mut [f32]]) {
        let n = images.len();
        let (row, short, long) = (n * self.short, self.short, self.long_in);
        for (c, plane) in buf[..self.input_len(n)].chunks_exact(self.padded * row).enumerate() {
            for (j, image) in images.iter_mut().enumerate() {
                let dst = &mut image[c * long * short..][..long * short];
                let src = &plane[self.pad_lo * row + j * short..];
                if self.transposed {
                    for (s, dst_row) in dst.chunks_exact_mut(long).enumerate() {
                        for (l, d) in dst_row.iter_mut().enumerate() {
                            *d += src[l * row + s];
                        }
                    }
                } else {
                    for (l, dst_row) in dst.chunks_exact_mut(short).enumerate() {
                        dst_row
                            .iter_mut()
                            .zip(&src[l * row..][..short])
                            .for_each(|(d, s)| *d += s);
                    }
                }
            }
        }
    }
}

/// The workspace any pass over `g` takes.
pub(in crate::ops::conv) fn workspace(g: &ConvGeometry) -> WorkspaceSize {
    weight_grad_workspace(g.out_channels * g.patch_len(), scratch_len(g))
}

/// The region one part takes for any pass: a chunk's padded input, its output (or output gradient) and
/// the per-tap weight gradient.
fn scratch_len(g: &ConvGeometry) -> usize {
    let (layout, per) = (Layout::new(g), Chunking::new(g).per);
    layout.input_len(per) + layout.output_len(per) + layout.taps * g.out_channels * g.in_channels
}

/// Whether a chunk of `n` images can write its output straight into the image.
fn output_in_place(layout: &Layout, n: usize) -> bool {
    Chunking::in_place(n) && !layout.transposed
}

pub(in crate::ops::conv) fn forward(g: &ConvGeometry, op: Operands<'_>, y: &mut ImagesMut<'_>, ws: &mut Workspace) {
    let Operands {
        x,
        w,
        fused: Fused { bias: b, relu },
    } = op;
    let layout = Layout::new(g);
    let chunking = Chunking::new(g);
    for_each_chunk(y, chunking, ws, scratch_len(g), |first, images, scratch, threads| {
        let n = images.len();
        let (x_buf, y_buf) = scratch.split_at_mut(layout.input_len(n));
        layout.pack_input(x, first, n, x_buf);
        let in_place = output_in_place(&layout, n);
        let out: &mut [f32] = if in_place {
            &mut *images[0]
        } else {
            &mut y_buf[..layout.output_len(n)]
        };
        let pixels = layout.long_out * n * layout.short;
        // The bias is written first and every tap accumulated onto it.
        if let Some(b) = b {
            for (row, &bias) in out.chunks_exact_mut(pixels).zip(b) {
                row.fill(bias);
            }
        }
        for t in 0..layout.taps {
            matmul(
                MatMut::row_major(out, g.out_channels, pixels),
                layout.tap_weights(w, t),
                layout.tap_input(x_buf, n, t),
                t > 0 || b.is_some(),
                threads,
            );
        }
        if !in_place {
            layout.unpack_output(&y_buf[..layout.output_len(n)], images);
        }
        if relu {
            images.iter_mut().for_each(|image| crate::kernels::relu_in_place(image));
        }
    });
}

/// Adds the input gradient into `dx`.
pub(crate) fn backward_input(g: &ConvGeometry, op: GradOperands<'_>, dx: &mut ImagesMut<'_>, ws: &mut Workspace) {
    let GradOperands { w, dy } = op;
    let layout = Layout::new(g);
    let chunking = Chunking::new(g);
    for_each_chunk(dx, chunking, ws, scratch_len(g), |first, images, scratch, threads| {
        let n = images.len();
        let (dx_buf, dy_buf) = scratch.split_at_mut(layout.input_len(n));
        let dy_mat: &[f32] = if output_in_place(&layout, n) {
            dy.get(first)
        } else {
            layout.pack_output_grad(dy, first, n, dy_buf);
            &dy_buf[..layout.output_len(n)]
        };
        let (row, pixels) = (n * layout.short, layout.long_out * n * layout.short);
        dx_buf.fill(0.0);
        for t in 0..layout.taps {
            matmul(
                MatMut::strided(&mut dx_buf[t * row..], g.in_channels, pixels, layout.padded * row),
                layout.tap_weights(w, t).t(),
                MatRef::row_major(dy_mat, g.out_channels, pixels),
                true,
                threads,
            );
        }
        layout.unpack_input_grad(dx_buf, images);
    });
}

/// Adds the weight gradient into `dw`.
pub(in crate::ops::conv) fn backward_weight(
    g: &ConvGeometry,
    x: Images<'_>,
    dy: Images<'_>,
    dw: &mut [f32],
    ws: &mut Workspace,
) {
    let layout = Layout::new(g);
    let chunking = Chunking::new(g);
    let (o, c, k) = (g.out_channels, g.in_channels, layout.taps);
    // dW_t += dY · X_tᵀ into a tap-major `[tap][out][in]` buffer, then added onto `[out][in][tap]`.
    let accumulate_images = |images: std::ops::Range<usize>, dw: &mut [f32], scratch: &mut [f32], threads| {
        let (x_buf, rest) = scratch.split_at_mut(layout.input_len(chunking.per));
        let (dy_buf, dw_taps) = rest.split_at_mut(layout.output_len(chunking.per));
        let dw_taps = &mut dw_taps[..k * o * c];
        dw_taps.fill(0.0);
        let mut first = images.start;
        while first < images.end {
            let n = chunking.per.min(images.end - first);
            layout.pack_input(x, first, n, x_buf);
            let dy_mat: &[f32] = if output_in_place(&layout, n) {
                dy.get(first)
            } else {
                layout.pack_output_grad(dy, first, n, dy_buf);
                &dy_buf[..layout.output_len(n)]
            };
            let pixels = layout.long_out * n * layout.short;
            for (t, dw_t) in dw_taps.chunks_exact_mut(o * c).enumerate() {
                matmul(
                    MatMut::row_major(dw_t, o, c),
                    MatRef::row_major(dy_mat, o, pixels),
                    layout.tap_input(x_buf, n, t).t(),
                    true,
                    threads,
                );
            }
            first += n;
        }
        for (t, dw_t) in dw_taps.chunks_exact(o * c).enumerate() {
            for (i, &v) in dw_t.iter().enumerate() {
                dw[i * k + t] += v;
            }
        }
    };
    accumulate_weight_grad(x.count(), chunking, dw, ws, scratch_len(g), accumulate_images);
}
