//! How a GEMM-based convolution call splits its batch, shared by `gemm_conv.rs` and `factorized.rs`.
//!
//! A small map (fewer than [`COLUMNS`] output pixels) would make a GEMM too narrow to run well and repack
//! the weights for every image, so images are grouped into chunks that one GEMM covers. Chunks run in
//! parallel (each GEMM on one thread) when there are at least as many chunks as threads, otherwise one
//! at a time with each GEMM using the whole pool: never both, so rayon does not nest.

use std::ops::Range;

use rayon::prelude::*;

use crate::ops::conv::ConvGeometry;
use crate::parallel::{Threads, for_each_part};
use crate::tensor::ImagesMut;
use crate::workspace::{Workspace, WorkspaceSize};

/// The GEMM width (output pixels of the images in one chunk) that small maps are grouped up to.
pub(in crate::ops::conv) const COLUMNS: usize = 256;

/// How one call splits its batch: `per` images to a GEMM.
#[derive(Debug, Clone, Copy)]
pub(in crate::ops::conv) struct Chunking {
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

/// Runs `f(first image, the chunk's images, region, threads)` over the chunks of `out`, in the static
/// parts [`crate::parallel::for_each_part`] cuts, each part's chunks one after another in its own
/// `region_len` values of `ws`'s regions.
pub(in crate::ops::conv) fn for_each_chunk<F>(
    out: &mut ImagesMut<'_>,
    chunking: Chunking,
    ws: &mut Workspace,
    region_len: usize,
    f: F,
) where
    F: Fn(usize, &mut [&mut [f32]], &mut [f32], Threads) + Sync,
{
    if out.is_empty() {
        return;
    }
    let per = chunking.per;
    let mut images: Vec<&mut [f32]> = out.iter_mut().map(|(_, img)| img).collect();
    let regions = ws.regions(region_len);
    for_each_part(&mut images, per, regions, region_len, |first, run, region, threads| {
        for (c, chunk) in run.chunks_mut(per).enumerate() {
            f(first + c * per, chunk, region, threads);
        }
    });
}

/// The most weight-gradient partials one call sums: as many parts as there are chunks, up to this. A
/// multiple of 1, 2, 3, 4 and 6, so those thread counts share the parts evenly.
const MAX_PARTS: usize = 12;

/// What [`accumulate_weight_grad`] takes of a workspace for a gradient of `grad_len` values and
/// regions of `region_len`.
pub(in crate::ops::conv) fn weight_grad_workspace(grad_len: usize, region_len: usize) -> WorkspaceSize {
    WorkspaceSize {
        partials: MAX_PARTS * grad_len,
        ..WorkspaceSize::regions(region_len)
    }
}

/// Adds to `dw` what `accumulate(images, dw, region, threads)` adds for the whole batch of `batch`
/// images.
///
/// The batch is cut into parts of whole chunks (as many as there are chunks, at most [`MAX_PARTS`]),
/// each part accumulates into a partial gradient of its own, and the partials are summed in part order
/// afterwards. The cut depends on the batch and the chunking alone, never on the thread count, so the
/// result has the same bits on any number of threads; the threads share the parts statically, each
/// running its parts in order in its own region.
pub(in crate::ops::conv) fn accumulate_weight_grad<F>(
    batch: usize,
    chunking: Chunking,
    dw: &mut [f32],
    ws: &mut Workspace,
    region_len: usize,
    accumulate: F,
) where
    F: Fn(Range<usize>, &mut [f32], &mut [f32], Threads) + Sync,
{
    if batch == 0 {
        return;
    }
    let chunks = batch.div_ceil(chunking.per);
    let per_part = chunks.div_ceil(chunks.clamp(1, MAX_PARTS)) * chunking.per;
    let parts = batch.div_ceil(per_part);
    if parts <= 1 {
        accumulate(0..batch, dw, &mut ws.regions(region_len)[..region_len], Threads::Pool);
        return;
    }
    let len = dw.len().max(1);
    let per_thread = parts.div_ceil(crate::parallel::threads());
    let (partials, regions) = ws.partials_and_regions(parts * len, region_len);
    partials.fill(0.0);
    partials
        .par_chunks_mut(per_thread * len)
        .zip(regions.par_chunks_mut(crate::workspace::region_stride(region_len)))
        .enumerate()
        .for_each(|(t, (own, region))| {
            for (j, part) in own.chunks_mut(len).enumerate() {
                let p = t * per_thread + j;
                let images = p * per_part..((p + 1) * per_part).min(batch);
                accumulate(images, part, &mut region[..region_len], Threads::One);
            }
        });
    for part in partials.chunks_exact(len) {
        for (d, p) in dw.iter_mut().zip(part) {
            *d += p;
        }
    }
}
