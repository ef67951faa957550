//! Convolution as GEMM, one image at a time. With [`Lowering::Im2col`] each image is first lowered to its
//! im2col matrix; with [`Lowering::Direct`] (1×1, stride 1, unpadded) the image already is that matrix.
//!
//! Work is split across the batch when there are at least as many images as threads (each GEMM then
//! runs on one thread), otherwise each GEMM uses the whole pool: never both, so rayon does not nest.
//! Scratch (im2col matrices, per-thread weight-gradient partials) is reused across calls.

use rayon::prelude::*;

use super::ConvGeometry;
use super::im2col::{col2im, im2col};
use crate::matmul::{MatMut, MatRef, Threads, matmul};
use crate::tensor::{Images, ImagesMut, with_scratch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lowering {
    Direct,
    Im2col,
}

impl Lowering {
    pub(super) fn scratch_len(self, g: &ConvGeometry) -> usize {
        match self {
            Lowering::Direct => 0,
            Lowering::Im2col => g.patch_len() * g.output_pixels(),
        }
    }
}

/// Runs `f(image index, output image, scratch, threads)` for every image of `out`.
fn per_image<F>(out: &mut ImagesMut<'_>, scratch_len: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], Threads) + Sync,
{
    if out.is_empty() {
        return;
    }
    if out.count() >= rayon::current_num_threads() {
        out.par_iter_mut()
            .for_each(|(n, o)| with_scratch(scratch_len, |s| f(n, o, s, Threads::One)));
    } else {
        with_scratch(scratch_len, |s| {
            out.iter_mut().for_each(|(n, o)| f(n, o, s, Threads::Pool))
        });
    }
}

pub(super) fn forward(
    g: &ConvGeometry,
    lowering: Lowering,
    x: Images<'_>,
    w: &[f32],
    b: Option<&[f32]>,
    relu: bool,
    y: &mut ImagesMut<'_>,
) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    per_image(y, lowering.scratch_len(g), |n, y_img, scratch, threads| {
        let col = match lowering {
            Lowering::Direct => x.get(n),
            Lowering::Im2col => {
                im2col(g, x.get(n), scratch);
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
        if relu {
            crate::kernels::relu_in_place(y_img);
        }
    });
}

/// Adds the input gradient into `dx`.
pub(super) fn backward_input(g: &ConvGeometry, lowering: Lowering, w: &[f32], dy: Images<'_>, dx: &mut ImagesMut<'_>) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    per_image(dx, lowering.scratch_len(g), |n, dx_img, scratch, threads| {
        let dy_img = MatRef::row_major(dy.get(n), g.out_channels, pixels);
        let w_t = MatRef::row_major(w, g.out_channels, k).t();
        match lowering {
            Lowering::Direct => matmul(MatMut::row_major(dx_img, k, pixels), w_t, dy_img, true, threads),
            Lowering::Im2col => {
                matmul(MatMut::row_major(scratch, k, pixels), w_t, dy_img, false, threads);
                col2im(g, scratch, dx_img);
            }
        }
    });
}

/// Adds the weight gradient into `dw`.
pub(super) fn backward_weight(g: &ConvGeometry, lowering: Lowering, x: Images<'_>, dy: Images<'_>, dw: &mut [f32]) {
    let (k, pixels) = (g.patch_len(), g.output_pixels());
    let scratch_len = lowering.scratch_len(g);
    // dw += dy_img · col_imgᵀ, summed over the images in `images`.
    let accumulate_images = |images: std::ops::Range<usize>, dw: &mut [f32], threads| {
        with_scratch(scratch_len, |col| {
            for n in images {
                let col_t = match lowering {
                    Lowering::Direct => MatRef::row_major(x.get(n), k, pixels).t(),
                    Lowering::Im2col => {
                        im2col(g, x.get(n), col);
                        MatRef::row_major(col, k, pixels).t()
                    }
                };
                let dy_img = MatRef::row_major(dy.get(n), g.out_channels, pixels);
                matmul(MatMut::row_major(dw, g.out_channels, k), dy_img, col_t, true, threads);
            }
        })
    };
    let threads = rayon::current_num_threads();
    let batch = x.count();
    if batch < threads.max(2) {
        accumulate_images(0..batch, dw, Threads::Pool);
        return;
    }
    // One partial gradient per contiguous run of images, summed in a fixed order afterwards: the result
    // is deterministic for a given thread count, and no thread waits on another.
    let per_chunk = batch.div_ceil(threads);
    let chunks = batch.div_ceil(per_chunk);
    let len = dw.len();
    // The partials live in a separate reusable buffer from the im2col scratch each task takes.
    let mut partials = std::mem::take(&mut *PARTIALS.lock().unwrap_or_else(|e| e.into_inner()));
    partials.clear();
    partials.resize(chunks * len, 0.0);
    partials.par_chunks_mut(len).enumerate().for_each(|(c, part)| {
        accumulate_images(c * per_chunk..((c + 1) * per_chunk).min(batch), part, Threads::One);
    });
    for part in partials.chunks_exact(len) {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
    *PARTIALS.lock().unwrap_or_else(|e| e.into_inner()) = partials;
}

/// Storage for weight-gradient partials, kept between calls so a training step does not allocate.
static PARTIALS: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());
