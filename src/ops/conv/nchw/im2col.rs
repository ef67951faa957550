//! The im2col lowering of one image: row `(ci, ky, kx)` of the matrix holds, for every output pixel, the
//! input value that tap reads (zero where it reads padding). Convolution becomes `W[out, in*kh*kw] · col`.
//! col2im is its adjoint: it adds each row back onto the input pixels it came from.

use crate::geometry::Axis;
use crate::ops::conv::ConvGeometry;

/// Where one image's im2col block sits in a matrix that may hold several images side by side: row `r`
/// of the block starts at `r * row_stride + column`.
#[derive(Debug, Clone, Copy)]
pub(in crate::ops::conv) struct Block {
    /// Values between consecutive rows of the matrix.
    pub row_stride: usize,
    /// The block's first column.
    pub column: usize,
}

impl Block {
    /// A matrix holding just this image's block.
    pub fn dense(g: &ConvGeometry) -> Block {
        Block {
            row_stride: g.output_pixels(),
            column: 0,
        }
    }
}

/// Fills one image's block of `col` (`patch_len` rows of `output_pixels` values) from the image `x`
/// (`in x h x w`).
pub(in crate::ops::conv) fn im2col(g: &ConvGeometry, x: &[f32], col: &mut [f32], block: Block) {
    for_each_row_segment(g, block, |plane, row_segment, iy, ox_range, kx| {
        let Some(iy) = iy else {
            col[row_segment].fill(0.0);
            return;
        };
        let dst = &mut col[row_segment];
        let src = &x[plane + iy * g.w.input..][..g.w.input];
        dst[..ox_range.start].fill(0.0);
        dst[ox_range.end..].fill(0.0);
        let ix0 = first_input(&g.w, ox_range.start, kx);
        let dst = &mut dst[ox_range.clone()];
        if g.w.stride == 1 {
            dst.copy_from_slice(&src[ix0..ix0 + dst.len()]);
        } else {
            for (d, s) in dst.iter_mut().zip(src[ix0..].iter().step_by(g.w.stride)) {
                *d = *s;
            }
        }
    });
}

/// Adds the rows of one image's block of `col` back onto the pixels of its gradient `dx` they were
/// read from.
pub(in crate::ops::conv) fn col2im(g: &ConvGeometry, col: &[f32], block: Block, dx: &mut [f32]) {
    for_each_row_segment(g, block, |plane, row_segment, iy, ox_range, kx| {
        let Some(iy) = iy else { return };
        let src = &col[row_segment][ox_range.clone()];
        let dst = &mut dx[plane + iy * g.w.input..][..g.w.input];
        let ix0 = first_input(&g.w, ox_range.start, kx);
        if g.w.stride == 1 {
            for (d, s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                *d += *s;
            }
        } else {
            for (d, s) in dst[ix0..].iter_mut().step_by(g.w.stride).zip(src) {
                *d += *s;
            }
        }
    });
}

/// The input column read by output column `ox` at tap `kx` (which must be a valid, unpadded read).
fn first_input(w: &Axis, ox: usize, kx: usize) -> usize {
    w.input_index(ox, kx).unwrap_or(0)
}

/// Walks the im2col matrix one output row (`ow` values) at a time, handing the callback: the offset of the
/// input channel plane, the range of that row segment in `col`, the input row it reads (or `None` for a
/// padding row), the output columns whose reads are real pixels, and the horizontal tap.
fn for_each_row_segment(
    g: &ConvGeometry,
    block: Block,
    mut f: impl FnMut(usize, std::ops::Range<usize>, Option<usize>, std::ops::Range<usize>, usize),
) {
    let (h, w) = (&g.h, &g.w);
    let plane_len = h.input * w.input;
    let mut row = 0;
    for ci in 0..g.in_channels {
        for ky in 0..h.kernel {
            for kx in 0..w.kernel {
                let valid = w.valid_outputs(kx);
                let mut offset = row * block.row_stride + block.column;
                row += 1;
                for oy in 0..h.output {
                    f(
                        ci * plane_len,
                        offset..offset + w.output,
                        h.input_index(oy, ky),
                        valid.clone(),
                        kx,
                    );
                    offset += w.output;
                }
            }
        }
    }
}
