//! How a GEMM-based convolution call splits its batch, shared by `gemm_conv.rs` and `factorized.rs`.
//!
//! A small map (fewer than [`COLUMNS`] output pixels) would make a GEMM too narrow to run well and repack
//! the weights for every image, so images are grouped into chunks that one GEMM covers. Chunks run in
//! parallel (each GEMM on one thread) when there are at least as many chunks as threads, otherwise one
//! at a time with each GEMM using the whole pool: never both, so rayon does not nest.

use std::ops::Range;

use rayon::prelude::*;

use super::ConvGeometry;
use crate::matmul::Threads;
use crate::tensor::{ImagesMut, with_scratch};

/// The GEMM width (output pixels of the images in one chunk) that small maps are grouped up to.
pub(super) const COLUMNS: usize = 256;

/// How one call splits its batch: `per` images to a GEMM.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chunking {
    pub per: usize,
}

impl Chunking {
    pub fn new(g: &ConvGeometry) -> Chunking {
        let pixels = g.output_pixels().max(1);
        Chunking {
            per: (COLUMNS / pixels).clamp(1, g.batch.max(1)),
        }
    }

    /// Whether a chunk of `count` images can use its one image's buffers in place.
    pub fn in_place(count: usize) -> bool {
        count == 1
    }
}

/// Runs `f(first image, the chunk's images, scratch, threads)` over the chunks of `out`.
pub(super) fn for_each_chunk<F>(out: &mut ImagesMut<'_>, chunking: Chunking, scratch_len: usize, f: F)
where
    F: Fn(usize, &mut [&mut [f32]], &mut [f32], Threads) + Sync,
{
    if out.is_empty() {
        return;
    }
    let per = chunking.per;
    let mut images: Vec<&mut [f32]> = out.iter_mut().map(|(_, img)| img).collect();
    if crate::parallel::pieces_fill_threads(images.len().div_ceil(per)) {
        images.par_chunks_mut(per).enumerate().for_each(|(c, chunk)| {
            with_scratch(scratch_len, |s| f(c * per, chunk, s, Threads::One));
        });
    } else {
        with_scratch(scratch_len, |s| {
            for (c, chunk) in images.chunks_mut(per).enumerate() {
                f(c * per, chunk, s, Threads::Pool);
            }
        });
    }
}

/// Adds to `dw` what `accumulate(images, dw, threads)` adds for the whole batch of `batch` images.
///
/// With enough chunks, each thread accumulates a contiguous run of chunks into a partial gradient of its
/// own, and the partials are summed in a fixed order afterwards: the result is deterministic for a given
/// thread count, and no thread waits on another.
pub(super) fn accumulate_weight_grad<F>(batch: usize, chunking: Chunking, dw: &mut [f32], accumulate: F)
where
    F: Fn(Range<usize>, &mut [f32], Threads) + Sync,
{
    let threads = crate::parallel::threads();
    let chunks = batch.div_ceil(chunking.per);
    if chunks < threads.max(2) {
        accumulate(0..batch, dw, Threads::Pool);
        return;
    }
    let per_part = chunks.div_ceil(threads) * chunking.per;
    let parts = batch.div_ceil(per_part);
    let len = dw.len();
    // The partials live in a reusable buffer of their own, apart from the scratch each task takes.
    let mut partials = std::mem::take(&mut *PARTIALS.lock().unwrap_or_else(|e| e.into_inner()));
    partials.clear();
    partials.resize(parts * len, 0.0);
    partials.par_chunks_mut(len).enumerate().for_each(|(p, part)| {
        accumulate(p * per_part..((p + 1) * per_part).min(batch), part, Threads::One);
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
