//! Convolution as GEMM, one image at a time. With [`Lowering::Im2col`] each image is first lowered to its
//! im2col matrix; with [`Lowering::Direct`] (1×1, stride 1, unpadded) the image already is that matrix.
//!
//! Work is split across the batch when there are at least as many images as threads (each GEMM then
//! runs on one thread), otherwise each GEMM uses the whole pool: never both, so rayon does not nest.

use rayon::prelude::*;

use super::ConvGeometry;
use super::im2col::{col2im, im2col};
use crate::matmul::{MatMut, MatRef, Threads, matmul};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lowering {
    Direct,
    Im2col,
}

impl Lowering {
    fn scratch_len(self, g: &ConvGeometry) -> usize {
        match self {
            Lowering::Direct => 0,
            Lowering::Im2col => g.patch_len() * g.output_pixels(),
        }
    }
}

/// Runs `f(image index, output chunk, scratch, threads)` for each image's chunk of `out`.
fn per_image<F>(batch: usize, out: &mut [f32], scratch_len: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], Threads) + Sync,
{
    if batch == 0 || out.is_empty() {
        return;
    }
    let chunk = out.len() / batch;
    if batch >= rayon::current_num_threads() {
        out.par_chunks_mut(chunk).enumerate().for_each_init(
            || vec![0.0; scratch_len],
            |scratch, (n, o)| f(n, o, scratch, Threads::One),
        );
    } else {
        let mut scratch = vec![0.0; scratch_len];
        for (n, o) in out.chunks_mut(chunk).enumerate() {
            f(n, o, &mut scratch, Threads::Pool);
        }
    }
}

pub(super) fn forward(g: &ConvGeometry, lowering: Lowering, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    per_image(g.batch, y, lowering.scratch_len(g), |n, y_img, scratch, threads| {
        let x_img = &x[n * g.input_image_len()..][..g.input_image_len()];
        let col = match lowering {
            Lowering::Direct => x_img,
            Lowering::Im2col => {
                im2col(g, x_img, scratch);
                &*scratch
            }
        };
        // The bias is written first and the product accumulated onto it: no second pass over y.
        if let Some(b) = b {
            for (row, &bias) in y_img.chunks_exact_mut(pixels).zip(b) {
                row.fill(bias);
            }
        }
        let y_mat = MatMut::row_major(y_img, g.out_channels, pixels);
        matmul(
            y_mat,
            MatRef::row_major(w, g.out_channels, k),
            MatRef::row_major(col, k, pixels),
            b.is_some(),
            threads,
        );
    });
}

pub(super) fn backward_input(g: &ConvGeometry, lowering: Lowering, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    per_image(g.batch, dx, lowering.scratch_len(g), |n, dx_img, scratch, threads| {
        let dy_img = MatRef::row_major(&dy[n * g.output_image_len()..], g.out_channels, pixels);
        let w_t = MatRef::row_major(w, g.out_channels, k).t();
        match lowering {
            Lowering::Direct => matmul(MatMut::row_major(dx_img, k, pixels), w_t, dy_img, false, threads),
            Lowering::Im2col => {
                matmul(MatMut::row_major(scratch, k, pixels), w_t, dy_img, false, threads);
                dx_img.fill(0.0);
                col2im(g, scratch, dx_img);
            }
        }
    });
}

pub(super) fn backward_weight(g: &ConvGeometry, lowering: Lowering, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    // dw += dy_img · col_imgᵀ, summed over the images in `images`.
    let accumulate_images = |images: std::ops::Range<usize>, dw: &mut [f32], col: &mut Vec<f32>, threads| {
        for n in images {
            let x_img = &x[n * g.input_image_len()..][..g.input_image_len()];
            let col_t = match lowering {
                Lowering::Direct => MatRef::row_major(x_img, k, pixels).t(),
                Lowering::Im2col => {
                    im2col(g, x_img, col);
                    MatRef::row_major(col, k, pixels).t()
                }
            };
            let dy_img = MatRef::row_major(&dy[n * g.output_image_len()..], g.out_channels, pixels);
            matmul(MatMut::row_major(dw, g.out_channels, k), dy_img, col_t, true, threads);
        }
    };
    let threads = rayon::current_num_threads();
    let scratch_len = lowering.scratch_len(g);
    if g.batch < threads.max(2) {
        accumulate_images(0..g.batch, dw, &mut vec![0.0; scratch_len], Threads::Pool);
        return;
    }
    // One partial gradient per thread over a contiguous run of images, then summed: deterministic for a
    // given thread count, and no thread waits on another.
    let per_chunk = g.batch.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..g.batch.div_ceil(per_chunk))
        .into_par_iter()
        .map(|c| {
            let mut part = vec![0.0; dw.len()];
            let images = c * per_chunk..((c + 1) * per_chunk).min(g.batch);
            accumulate_images(images, &mut part, &mut vec![0.0; scratch_len], Threads::One);
            part
        })
        .collect();
    for part in partials {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
}
