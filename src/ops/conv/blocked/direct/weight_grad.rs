//! The weight and bias gradients of a direct convolution: pixels are the reduction, in chunks of
//! images summed in order, so the result does not depend on the thread count.

use rayon::prelude::*;

use super::forward::Source;
use super::packing::{PackedConv, group_blocks, halo, weight_grad_chunk};
use super::{DirectWeights, Kernels, weight_grad_bf16};
use crate::blocked::{self, Halo, Layout};
use crate::kernels;
use crate::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};
use crate::parallel;
use crate::tensor::{Images, ImagesMut};
use crate::workspace::Workspace;

impl PackedConv {
    /// Adds the weight gradient of a batch into `dw`, laid out as these packed weights (so it is zero
    /// wherever they are padding): `x` holds the batch's blocked inputs with [`halo`], `dy` its blocked
    /// output gradients. The pixels are the reduction: each microkernel tile owns up to 3 output blocks
    /// × 8 input channels of one (input block, tap) and sums over every pixel of a chunk of images, the
    /// chunks in order, so the result does not depend on the thread count.
    pub fn add_weight_grad_blocked(&self, x: &[f32], dy: &[f32], dw: &mut [f32], isa: Isa) {
        let (in_len, out_len) = self.image_lens();
        let batch = x.len() / in_len;
        assert_eq!(x.len(), batch * in_len, "blocked input with halo");
        assert_eq!(dy.len(), batch * out_len, "blocked output gradient");
        let chunk = self.weight_grad_chunk();
        for first in (0..batch).step_by(chunk) {
            let count = chunk.min(batch - first);
            self.accumulate_weight_grad(
                InPlace::dense(x, first, in_len),
                InPlace::dense(dy, first, out_len),
                count,
                dw,
                isa,
            );
        }
    }

    /// Values of one blocked input image (with [`halo`]) and of one blocked output image.
    pub(super) fn image_lens(&self) -> (usize, usize) {
        let g = &self.geometry;
        (
            blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo(g)),
            blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default()),
        )
    }

    /// Images per weight-gradient chunk ([`weight_grad_chunk`]).
    pub(super) fn weight_grad_chunk(&self) -> usize {
        let (in_len, out_len) = self.image_lens();
        weight_grad_chunk(in_len + out_len)
    }

    /// Adds the weight gradient of `count` blocked images of `x` (with [`halo`]) and `dy` (one chunk,
    /// summed pixel after pixel) into the packed-layout `dw`, each group of output blocks on its own
    /// task.
    pub(super) fn accumulate_weight_grad(
        &self,
        x: InPlace<'_>,
        dy: InPlace<'_>,
        count: usize,
        dw: &mut [f32],
        isa: Isa,
    ) {
        let g = &self.geometry;
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        assert_eq!(dw.len(), self.weights.len(), "weight gradient in the packed layout");
        let [hp, wp] = halo(g).padded([g.h.input, g.w.input]);
        let taps = g.h.kernel * g.w.kernel;
        let stride = self.block_stride;
        // Where x's rows are as wide as dy's (no padding across the width, stride 1: every 1×1 layer),
        // consecutive rows continue each other in both, so one run per image and tap walks every pixel;
        // otherwise one run per output row. (Padding dy's rows to x's width instead would let every
        // stride-1 layer do so, but the padding columns cost as many multiply-adds as they save: 28-55%
        // more on 6×6 maps, slower in `cargo bench --bench conv`.)
        let (rows, depth) = if ow == wp && g.h.stride == 1 && g.w.stride == 1 {
            (1, (oh - 1) * wp + ow)
        } else {
            (oh, ow)
        };
        // Adds the gradient of input blocks `icbs` for `blocks` output blocks from `first_block` into
        // `dw_part`, which starts at the first of those input blocks in the first of those output blocks.
        let accumulate = |first_block: usize, blocks: usize, icbs: std::ops::Range<usize>, dw_part: &mut [f32]| {
            // The tile's "pixels" are input channels of one block: all 16 for one output block.
            let pixels = isa.tile_pixels(blocks).min(LANES);
            {
                // One list per task. A per-thread list reused across calls grew at whichever step a
                // thread first ran the longest task, so warm steps no longer allocated alike.
                let mut runs = Vec::with_capacity(count * rows);
                let runs = &mut runs;
                for icb in icbs.clone() {
                    for tap in 0..taps {
                        let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                        runs.clear();
                        for n in 0..count {
                            for oy in 0..rows {
                                let dy_at = dy.image(n) + first_block * plane + oy * ow * LANES;
                                let y_in = oy * g.h.stride + ky * g.h.dilation;
                                let x_at = x.image(n) + ((icb * hp + y_in) * wp + kx * g.w.dilation) * LANES;
                                runs.push((dy_at, x_at));
                            }
                        }
                        for ic in (0..LANES).step_by(pixels) {
                            let tile = Tile {
                                shape: TileShape {
                                    blocks,
                                    pixels: pixels.min(LANES - ic),
                                },
                                runs,
                                depth,
                                w_block_stride: plane,
                                x_pixel_stride: 1,
                                x_depth_stride: g.w.stride * LANES,
                                c_offset: ((icb - icbs.start) * taps + tap) * LANES * LANES + ic * LANES,
                                c_block_stride: stride,
                                epilogue: Epilogue {
                                    accumulate: true,
                                    bias: None,
                                    relu: false,
                                },
                            };
                            microkernel::run(isa, &tile, dy.data, &x.data[ic..], dw_part);
                        }
                    }
                }
            }
        };
        self.for_each_weight_grad_part(dw, 3.min(isa.preferred_tile().blocks), accumulate);
    }

    /// Splits the packed-layout weight gradient `dw` into parts across the pool and calls
    /// `accumulate(first output block, output blocks, input blocks, the part of dw)` on each: groups of
    /// up to `most_blocks` output blocks, or (output block, input block) pairs when there are too few
    /// output blocks to share. Every output element's sum runs over the same runs and steps in the
    /// same order however the tiles are grouped, so the split does not change the result.
    pub(super) fn for_each_weight_grad_part(
        &self,
        dw: &mut [f32],
        most_blocks: usize,
        accumulate: impl Fn(usize, usize, std::ops::Range<usize>, &mut [f32]) + Sync,
    ) {
        let g = &self.geometry;
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        let stride = self.block_stride;
        let per_icb = g.h.kernel * g.w.kernel * LANES * LANES;
        let threads = parallel::threads();
        if out_blocks >= 2 * threads {
            // Tiles of up to `most_blocks` output blocks (fewer when that is what gives every thread a
            // group of its own): one task per group, each owning its blocks of `dw`.
            let blocks = group_blocks(out_blocks, most_blocks);
            dw.par_chunks_mut(blocks * stride)
                .enumerate()
                .for_each(|(grp, dw_group)| {
                    accumulate(grp * blocks, dw_group.len().div_ceil(stride), 0..in_blocks, dw_group)
                });
        } else {
            // Too few output blocks to share (16-48 channels on 2 threads): one task per (output block,
            // input block), so the threads share the work, with tiles of one output block.
            dw.par_chunks_mut(stride).enumerate().for_each(|(ob, dw_block)| {
                dw_block[..in_blocks * per_icb]
                    .par_chunks_mut(per_icb)
                    .enumerate()
                    .for_each(|(icb, dw_part)| accumulate(ob, 1, icb..icb + 1, dw_part));
            });
        }
    }
}

/// Adds the weight gradient of inputs `x` (in `x_layout`) and output gradients `dy` (in `dy_layout`)
/// into `dw` (`[out, in, kh, kw]`): chunks of images written into the blocked layout in `ws` (each
/// image on its own task), summed into a packed-layout gradient in `ws`, unpacked once at the end.
#[allow(clippy::too_many_arguments)]
pub fn add_weight_grad_images(
    weights: &DirectWeights,
    x: Images<'_>,
    x_layout: Layout,
    dy: Images<'_>,
    dy_layout: Layout,
    dw: &mut [f32],
    ws: &mut Workspace,
    isa: Isa,
) {
    let packed = match weights.kernels(x_layout) {
        Kernels::Blocked(packed) => packed,
        Kernels::FewChannels(stem) => return stem.add_weight_grad_images(x, dy, dy_layout, dw, ws, isa),
    };
    let g = &packed.geometry;
    let source = Source::of(packed, x, x_layout);
    let gradient = Source {
        images: dy,
        layout: dy_layout,
        channels: g.out_channels,
        map: [g.h.output, g.w.output],
        halo: Halo::default(),
        bf16: packed.bf16_isa().is_some(),
    };
    let (in_len, out_len) = packed.image_lens();
    let batch = x.count();
    let chunk = packed.weight_grad_chunk().min(batch.max(1));
    if let (true, Some(bf16_isa)) = (weight_grad_bf16::pairs_apply(packed), packed.bf16_isa()) {
        // bf16 operands in pair layouts, in the same workspace (they take less than the float32 copies).
        let lines = weight_grad_bf16::Lines::of(packed);
        let (x_len, dy_len) = (lines.x_len(g.in_channels), lines.dy_len(g.out_channels));
        let (xs_f32, dys_f32) = ((chunk * x_len).div_ceil(2), (chunk * dy_len).div_ceil(2));
        let (dw_packed, region) = ws.partials_and_regions(packed.weights.len(), xs_f32 + dys_f32);
        dw_packed.fill(0.0);
        let (xs, dys) = region[..xs_f32 + dys_f32].split_at_mut(xs_f32);
        let (xs, dys) = (crate::bf16::as_bf16_scratch(xs), crate::bf16::as_bf16_scratch(dys));
        for first in (0..batch).step_by(chunk) {
            let count = chunk.min(batch - first);
            let (xs, dys) = (&mut xs[..count * x_len], &mut dys[..count * dy_len]);
            weight_grad_bf16::write_operands(&source, &gradient, &lines, first, count, xs, dys);
            packed.accumulate_weight_grad_bf16(xs, dys, count, dw_packed, bf16_isa);
        }
        packed.unpack_add(dw_packed, dw);
        return;
    }
    // Blocked images that need no halo are read where they lie; the others are copied a chunk at a
    // time (on googlenet-d2l's 1x1 layers copying both took a third of the weight gradient's time).
    let (x_in_place, dy_in_place) = (source.in_place(), gradient.in_place());
    let copied = |in_place: Option<InPlace<'_>>, len: usize| if in_place.is_some() { 0 } else { chunk * len };
    let (x_copy, dy_copy) = (copied(x_in_place, in_len), copied(dy_in_place, out_len));
    let (dw_packed, region) = ws.partials_and_regions(packed.weights.len(), x_copy + dy_copy);
    dw_packed.fill(0.0);
    let (xb, dyb) = region[..x_copy + dy_copy].split_at_mut(x_copy);
    for first in (0..batch).step_by(chunk) {
        let count = chunk.min(batch - first);
        let copy = |from: &Source<'_>, to: &mut [f32], len: usize| {
            to[..count * len]
                .par_chunks_mut(len)
                .enumerate()
                .for_each(|(i, image)| from.write_blocked(first + i, image));
        };
        if x_in_place.is_none() {
            copy(&source, xb, in_len);
        }
        if dy_in_place.is_none() {
            copy(&gradient, dyb, out_len);
        }
        let x_chunk = x_in_place.map_or(InPlace::dense(xb, 0, in_len), |x| x.skip_images(first));
        let dy_chunk = dy_in_place.map_or(InPlace::dense(dyb, 0, out_len), |dy| dy.skip_images(first));
        packed.accumulate_weight_grad(x_chunk, dy_chunk, count, dw_packed, isa);
    }
    packed.unpack_add(dw_packed, dw);
}

/// Blocked images read where they lie: image `n` starts at `first + n · stride` in `data`.
#[derive(Clone, Copy)]
pub(super) struct InPlace<'a> {
    pub(super) data: &'a [f32],
    pub(super) first: usize,
    pub(super) stride: usize,
}

impl<'a> InPlace<'a> {
    /// Images of `len` values one after another in `data`, from image `first`.
    pub(super) fn dense(data: &'a [f32], first: usize, len: usize) -> InPlace<'a> {
        InPlace {
            data,
            first: first * len,
            stride: len,
        }
    }

    /// The same images from image `n` on.
    pub(super) fn skip_images(self, n: usize) -> InPlace<'a> {
        InPlace {
            first: self.image(n),
            ..self
        }
    }

    /// Where image `n` starts in `data`.
    pub(super) fn image(&self, n: usize) -> usize {
        self.first + n * self.stride
    }
}

/// `db[c] += sum over images and pixels of dy[c, pixel]` for blocked `dy` (`channels` channels of
/// `pixels` pixels): per image and block, the 16 channels summed side by side in float64
/// ([`kernels::block_lane_sums`]), then the images in order, so the result does not depend on the
/// thread count.
pub fn bias_grad_blocked(dy: Images<'_>, channels: usize, pixels: usize, db: &mut [f32]) {
    let plane = pixels * LANES;
    db[..channels]
        .par_chunks_mut(LANES)
        .enumerate()
        .for_each(|(b, db_block)| {
            let images = (0..dy.count()).map(|n| kernels::block_lane_sums(&dy.get(n)[b * plane..][..plane]));
            add_image_sums(images, db_block);
        });
}

/// Adds per-image lane sums, in image order, into one block's bias gradient.
pub(super) fn add_image_sums(images: impl Iterator<Item = [f64; LANES]>, db_block: &mut [f32]) {
    let mut total = [0f64; LANES];
    for image in images {
        for (t, s) in total.iter_mut().zip(image) {
            *t += s;
        }
    }
    for (d, t) in db_block.iter_mut().zip(total) {
        *d += t as f32;
    }
}

/// The ReLU mask and the bias gradient of blocked images in one pass per plane: `dy = 0` where the
/// ReLU's output `y` is not positive, then `db[c] += sum over images and pixels of dy[c, pixel]`, with
/// the sums of [`bias_grad_blocked`] in its order (so the same bits). The images run across the pool,
/// each plane masked and then summed while it is in cache.
pub fn relu_mask_and_bias_grad_blocked(
    dy: &mut ImagesMut<'_>,
    y: Images<'_>,
    channels: usize,
    pixels: usize,
    db: &mut [f32],
) {
    let (blocks, plane) = (blocked::blocks(channels), pixels * LANES);
    // Per image and block, the 16 channels' sums over the image's pixels.
    let mut sums = vec![[0f64; LANES]; dy.count() * blocks];
    dy.par_iter_mut()
        .zip(sums.par_chunks_mut(blocks.max(1)))
        .for_each(|((n, dy_image), image_sums)| {
            let y_image = y.get(n);
            for (b, sum) in image_sums.iter_mut().enumerate() {
                let dy_plane = &mut dy_image[b * plane..][..plane];
                kernels::relu_mask(dy_plane, &y_image[b * plane..][..plane]);
                *sum = kernels::block_lane_sums(dy_plane);
            }
        });
    for (b, db_block) in db[..channels].chunks_mut(LANES).enumerate() {
        add_image_sums(sums.chunks_exact(blocks).map(|image_sums| image_sums[b]), db_block);
    }
}
