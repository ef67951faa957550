//! Direct convolution on the blocked layout (`crate::blocked`) with incept's microkernel: no im2col copy.
//! Each output tile (up to 4 blocks of 16 output channels × up to 8 pixels of one output row) is one
//! microkernel call whose runs walk every (input-channel block, kernel tap) pair over the input in
//! place, 16 input channels per run.
//!
//! Weights are packed once into the kernel's layout ([`PackedConv`]): per output block, for each
//! (input block, tap), 16 input channels × 16 output channels; channels past the real counts are zero.
//! The input is a blocked image with a zero halo as wide as the convolution's padding, so border tiles
//! need no special case.
//!
//! The input gradient of a stride-1 convolution is the same direct convolution over the output gradient,
//! with the weights flipped and transposed ([`PackedConv::input_grad`]).
//!
//! [`ConvAlgo::Direct`](super::ConvAlgo::Direct) runs these kernels on NCHW activations: each image is
//! reordered into the blocked layout in the caller's workspace, convolved, and reordered back
//! ([`forward_images`], [`add_input_grad_images`], [`add_weight_grad_images`]), with the weights packed
//! once in a [`DirectWeights`] the executor refreshes after every weight update. A reorder reads and
//! writes each value once; the convolution does `k·k·out` multiply-adds per input value.

use rayon::prelude::*;

use super::ConvGeometry;
use super::direct_stem::{self, StemWeights};
use crate::blocked::{self, Halo, Layout};
use crate::kernels;
use crate::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};
use crate::parallel::{self, Threads, for_each_chunk_mut, for_each_part};
use crate::tensor::{Images, ImagesMut};
use crate::workspace::{Workspace, WorkspaceSize};

/// A convolution's weights and bias in the microkernel's layout, and the runs one output tile walks.
#[derive(Debug, Clone)]
pub struct PackedConv {
    geometry: ConvGeometry,
    /// Distance between consecutive output blocks' weights ([`microkernel::block_stride`]).
    block_stride: usize,
    weights: Vec<f32>,
    /// One per output channel, padded to whole blocks with zeros (all zero without a bias).
    bias: Vec<f32>,
    /// `(weight offset, input offset)` per (input block, tap), relative to the tile's first weight and
    /// its first input pixel.
    runs: Vec<(usize, usize)>,
}

impl PackedConv {
    /// Packs PyTorch-layout weights `[out, in, kh, kw]` (and a bias) for the convolution `g`.
    pub fn new(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>) -> PackedConv {
        let mut packed = PackedConv::zeros(g);
        packed.repack(w, b);
        packed
    }

    /// Buffers for `g`'s packed weights, all zero, and the runs of its tiles.
    fn zeros(g: &ConvGeometry) -> PackedConv {
        let in_blocks = blocked::blocks(g.in_channels);
        let taps = g.h.kernel * g.w.kernel;
        let [hp, wp] = halo(g).padded([g.h.input, g.w.input]);
        let runs = (0..in_blocks)
            .flat_map(|icb| (0..taps).map(move |tap| (icb, tap)))
            .map(|(icb, tap)| {
                let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                let w_offset = (icb * taps + tap) * LANES * LANES;
                let x_offset = ((icb * hp + ky * g.h.dilation) * wp + kx * g.w.dilation) * LANES;
                (w_offset, x_offset)
            })
            .collect();
        PackedConv {
            geometry: *g,
            block_stride: packed_block_stride(g),
            weights: vec![0.0; packed_len(g)],
            bias: vec![0.0; blocked::blocks(g.out_channels) * LANES],
            runs,
        }
    }

    /// Packs new values of the same weights (after an optimizer step) into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let taps = g.h.kernel * g.w.kernel;
        assert_eq!(w.len(), outputs * inputs * taps, "conv weights [out, in, kh, kw]");
        self.pack(|o, c, tap| w[(o * inputs + c) * taps + tap]);
        pack_bias(&mut self.bias, b, outputs);
    }

    /// Fills the packed weights with `weight(output channel, input channel, tap)` for the real channels,
    /// zeros elsewhere.
    fn pack(&mut self, weight: impl Fn(usize, usize, usize) -> f32 + Sync) {
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let taps = g.h.kernel * g.w.kernel;
        self.weights
            .par_chunks_mut(self.block_stride)
            .enumerate()
            .for_each(|(ob, block)| {
                for (i, v) in block.iter_mut().enumerate() {
                    // i = ((icb · taps + tap) · 16 + ic) · 16 + oc, with zeros past the real channels
                    // and in the stride's padding.
                    let (oc, rest) = (i % LANES, i / LANES);
                    let (ic, rest) = (rest % LANES, rest / LANES);
                    let (tap, icb) = (rest % taps, rest / taps);
                    let (o, c) = (ob * LANES + oc, icb * LANES + ic);
                    *v = if o < outputs && c < inputs {
                        weight(o, c, tap)
                    } else {
                        0.0
                    };
                }
            });
    }

    /// The convolution that computes `g`'s input gradient, packed: over the output gradient (as its
    /// input, with a halo of `(K - 1)·dilation - pad` per side), `w'[c][o][ky][kx] = w[o][c][K-1-ky][K-1-kx]`,
    /// no bias. `None` when `g` has a stride above 1 or more padding than its kernel reaches (those need a
    /// transposed convolution, not built yet).
    pub fn input_grad(g: &ConvGeometry, w: &[f32]) -> Option<PackedConv> {
        let mut back = PackedConv::zeros(&g.input_grad_geometry()?);
        back.repack_flipped(w);
        Some(back)
    }

    /// Packs new values of the forward weights `w` (`[out, in, kh, kw]` of the convolution whose input
    /// gradient these weights compute) flipped and transposed, into the existing buffers.
    fn repack_flipped(&mut self, w: &[f32]) {
        let back = &self.geometry;
        // The forward convolution's input channels are this one's outputs, and the other way round.
        let (forward_inputs, taps) = (back.out_channels, back.h.kernel * back.w.kernel);
        assert_eq!(
            w.len(),
            back.in_channels * forward_inputs * taps,
            "conv weights [out, in, kh, kw]"
        );
        // Flipping both kernel axes reverses the tap order: (K-1-ky)·K + (K-1-kx) = K·K - 1 - tap.
        self.pack(|c, o, tap| w[(o * forward_inputs + c) * taps + (taps - 1 - tap)]);
    }

    /// The packed weights themselves (a weight gradient in this layout starts as a copy or as zeros).
    pub fn packed_weights(&self) -> &[f32] {
        &self.weights
    }

    /// The convolution these weights are packed for.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }
}

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
    fn image_lens(&self) -> (usize, usize) {
        let g = &self.geometry;
        (
            blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo(g)),
            blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default()),
        )
    }

    /// Images per weight-gradient chunk ([`weight_grad_chunk`]).
    fn weight_grad_chunk(&self) -> usize {
        let (in_len, out_len) = self.image_lens();
        weight_grad_chunk(in_len + out_len)
    }

    /// Adds the weight gradient of `count` blocked images of `x` (with [`halo`]) and `dy` (one chunk,
    /// summed pixel after pixel) into the packed-layout `dw`, each group of output blocks on its own
    /// task.
    fn accumulate_weight_grad(&self, x: InPlace<'_>, dy: InPlace<'_>, count: usize, dw: &mut [f32], isa: Isa) {
        let g = &self.geometry;
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        assert_eq!(dw.len(), self.weights.len(), "weight gradient in the packed layout");
        let [hp, wp] = halo(g).padded([g.h.input, g.w.input]);
        let taps = g.h.kernel * g.w.kernel;
        let stride = self.block_stride;
        let per_icb = taps * LANES * LANES;
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
        // Every output element's sum runs over the same runs and steps in the same order however the
        // tiles are grouped, so the split below does not change the result.
        let threads = parallel::threads();
        if out_blocks >= 2 * threads {
            // Tiles of up to 3 output blocks × 8 input channels (fewer blocks when that is what gives
            // every thread a group of its own): one task per group, each owning its blocks of `dw`.
            let blocks = group_blocks(out_blocks, 3.min(isa.preferred_tile().blocks));
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

    /// `packed` (in these weights' layout) back in PyTorch's `[out, in, kh, kw]`.
    pub fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let g = &self.geometry;
        let mut w = vec![0.0; g.out_channels * g.in_channels * g.h.kernel * g.w.kernel];
        self.unpack_add(packed, &mut w);
        w
    }

    /// Adds `packed` (in these weights' layout) into `w`, laid out as PyTorch's `[out, in, kh, kw]`.
    fn unpack_add(&self, packed: &[f32], w: &mut [f32]) {
        let g = &self.geometry;
        let taps = g.h.kernel * g.w.kernel;
        assert_eq!(
            w.len(),
            g.out_channels * g.in_channels * taps,
            "conv weights [out, in, kh, kw]"
        );
        for (i, v) in w.iter_mut().enumerate() {
            let (tap, rest) = (i % taps, i / taps);
            let (c, o) = (rest % g.in_channels, rest / g.in_channels);
            let (ob, oc, icb, ic) = (o / LANES, o % LANES, c / LANES, c % LANES);
            *v += packed[ob * self.block_stride + ((icb * taps + tap) * LANES + ic) * LANES + oc];
        }
    }
}

/// Writes the bias `b` (`outputs` values; zeros without one) into packed `bias`, padded with zeros to
/// whole blocks.
pub(super) fn pack_bias(bias: &mut [f32], b: Option<&[f32]>, outputs: usize) {
    bias.fill(0.0);
    if let Some(b) = b {
        assert_eq!(b.len(), outputs, "conv bias [out]");
        bias[..outputs].copy_from_slice(b);
    }
}

/// Images per weight-gradient chunk: as many as keep a chunk's inputs and output gradients
/// (`per_image` values for one image) within ~2 MB, at least one.
pub(super) fn weight_grad_chunk(per_image: usize) -> usize {
    (512 * 1024 / per_image).max(1)
}

/// Output blocks per group when the groups run across the pool: the most, up to `most`, that still
/// gives every thread a group of its own (one when none does).
pub(super) fn group_blocks(out_blocks: usize, most: usize) -> usize {
    (1..=most)
        .rev()
        .find(|&b| out_blocks.div_ceil(b) >= parallel::threads())
        .unwrap_or(1)
}

/// Distance between consecutive output blocks of `g`'s packed weights.
fn packed_block_stride(g: &ConvGeometry) -> usize {
    let taps = g.h.kernel * g.w.kernel;
    microkernel::block_stride(blocked::blocks(g.in_channels) * taps * LANES * LANES)
}

/// Values of `g`'s packed weights.
fn packed_len(g: &ConvGeometry) -> usize {
    blocked::blocks(g.out_channels) * packed_block_stride(g)
}

/// The zero halo the input needs: the convolution's padding.
pub fn halo(g: &ConvGeometry) -> Halo {
    Halo([g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi])
}

/// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) for a batch: `x` holds blocked images with the
/// [`halo`] of `packed`'s convolution, `y` blocked images without halo, both one after another. With
/// `accumulate`, the result is added to `y` instead (before the ReLU).
pub fn forward_blocked(packed: &PackedConv, x: &[f32], y: &mut [f32], accumulate: bool, relu: bool, isa: Isa) {
    let (in_len, out_len) = packed.image_lens();
    let batch = x.len() / in_len;
    assert_eq!(x.len(), batch * in_len, "blocked input with halo");
    assert_eq!(y.len(), batch * out_len, "blocked output");
    if parallel::pieces_fill_threads(batch) {
        y.par_chunks_mut(out_len)
            .zip(x.par_chunks(in_len))
            .for_each(|(y_img, x_img)| forward_image(packed, x_img, y_img, accumulate, relu, isa, Threads::One));
    } else {
        for (y_img, x_img) in y.chunks_mut(out_len).zip(x.chunks(in_len)) {
            forward_image(packed, x_img, y_img, accumulate, relu, isa, Threads::Pool);
        }
    }
}

/// One blocked image of [`forward_blocked`]: tiles in groups of output blocks, the groups across the
/// pool (as many groups as keep every thread busy) or in order on this thread.
fn forward_image(
    packed: &PackedConv,
    x_img: &[f32],
    y_img: &mut [f32],
    accumulate: bool,
    relu: bool,
    isa: Isa,
    threads: Threads,
) {
    let g = &packed.geometry;
    let (oh, ow) = (g.h.output, g.w.output);
    let plane = oh * ow * LANES;
    let [_, wp] = halo(g).padded([g.h.input, g.w.input]);
    let TileShape { blocks, .. } = isa.preferred_tile();
    let blocks = match threads {
        Threads::One => blocks,
        Threads::Pool => group_blocks(blocked::blocks(g.out_channels), blocks),
    };
    // A 1×1, stride-1, unpadded convolution reads pixel `i` of the output at input pixel `i`: the whole
    // map is one row, so a 3×3 map fills a 6-pixel tile and a 3-pixel one instead of three 3-pixel ones.
    let (rows, cols) = if g.is_pointwise() { (1, oh * ow) } else { (oh, ow) };
    // The runs in chunks of whole input blocks whose weights (for `blocks` output blocks) stay within
    // ~24 KB, half of a 48 KB L1: every tile of the image then reuses one chunk's weights from L1
    // instead of streaming all of them from L2 for its few pixels. A tile's sums go through the output
    // between chunks (stored and reloaded exactly, in the same order), so the result has the same bits.
    let taps = g.h.kernel * g.w.kernel;
    let block_weights = blocks * taps * LANES * LANES * std::mem::size_of::<f32>();
    let chunk_runs = (24 * 1024 / block_weights).max(1) * taps;
    let total_runs = packed.runs.len();
    // Each group of `blocks` output blocks writes only its own planes.
    for_each_chunk_mut(y_img, blocks * plane, threads, |group, y_group| {
        let first_block = group * blocks;
        let shape_blocks = y_group.len() / plane;
        // As wide as the set allows for this many blocks, split evenly along the row (a 32-pixel row in
        // two tiles of 16 rather than 16, 16 and nothing; 24 in two of 12 rather than 16 and 8).
        let widest = isa.tile_pixels(shape_blocks);
        let pixels = cols.div_ceil(cols.div_ceil(widest));
        let weights = &packed.weights[first_block * packed.block_stride..];
        let bias = &packed.bias[first_block * LANES..];
        for first_run in (0..total_runs).step_by(chunk_runs) {
            let last = first_run + chunk_runs >= total_runs;
            let epilogue = Epilogue {
                accumulate: accumulate || first_run > 0,
                bias: last.then_some(bias),
                relu: relu && last,
            };
            let runs = &packed.runs[first_run..(first_run + chunk_runs).min(total_runs)];
            for oy in 0..rows {
                for ox in (0..cols).step_by(pixels) {
                    let tile = Tile {
                        shape: TileShape {
                            blocks: shape_blocks,
                            pixels: pixels.min(cols - ox),
                        },
                        runs,
                        depth: LANES,
                        w_block_stride: packed.block_stride,
                        x_pixel_stride: g.w.stride * LANES,
                        x_depth_stride: 1,
                        c_offset: (oy * cols + ox) * LANES,
                        c_block_stride: plane,
                        epilogue,
                    };
                    let x_tile = &x_img[(oy * g.h.stride * wp + ox * g.w.stride) * LANES..];
                    microkernel::run(isa, &tile, weights, x_tile, y_group);
                }
            }
        }
    });
}

/// A convolution's weights packed once for [`ConvAlgo::Direct`](super::ConvAlgo::Direct): on the
/// blocked layout, for the forward pass and the weight gradient, and flipped and transposed for the
/// input gradient of a stride-1 convolution (`None` otherwise: that input gradient goes through
/// im2col + GEMM); or, for an input of fewer than 16 channels, in the few-channel layout of
/// `direct_stem.rs` (whose input gradient also goes through im2col).
#[derive(Debug, Clone)]
pub struct DirectWeights(Packed);

#[derive(Debug, Clone)]
enum Packed {
    Blocked {
        forward: Box<PackedConv>,
        input_grad: Option<Box<PackedConv>>,
    },
    FewChannels(Box<StemWeights>),
}

impl DirectWeights {
    /// Packs `w` (`[out, in, kh, kw]`) and `b` for `g` (whose batch size does not matter).
    pub fn new(g: &ConvGeometry, w: &[f32], b: Option<&[f32]>) -> DirectWeights {
        DirectWeights(if direct_stem::eligible(g) {
            Packed::FewChannels(Box::new(StemWeights::new(g, w, b)))
        } else {
            Packed::Blocked {
                forward: Box::new(PackedConv::new(g, w, b)),
                input_grad: PackedConv::input_grad(g, w).map(Box::new),
            }
        })
    }

    /// Zero weights in `g`'s layout: enough for a weight gradient, which does not read them.
    pub fn layout(g: &ConvGeometry) -> DirectWeights {
        if direct_stem::eligible(g) {
            let zeros = vec![0.0; g.out_channels * g.in_channels * g.h.kernel * g.w.kernel];
            return DirectWeights(Packed::FewChannels(Box::new(StemWeights::new(g, &zeros, None))));
        }
        DirectWeights(Packed::Blocked {
            forward: Box::new(PackedConv::zeros(g)),
            input_grad: None,
        })
    }

    /// Packs new values of the same weights into the existing buffers (no allocation).
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        match &mut self.0 {
            Packed::Blocked { forward, input_grad } => {
                forward.repack(w, b);
                if let Some(back) = input_grad {
                    back.repack_flipped(w);
                }
            }
            Packed::FewChannels(stem) => stem.repack(w, b),
        }
    }

    /// Whether the input gradient runs on the microkernel (stride 1) rather than through im2col + GEMM.
    pub fn has_direct_input_grad(&self) -> bool {
        matches!(
            self.0,
            Packed::Blocked {
                input_grad: Some(_),
                ..
            }
        )
    }
}

/// Whether `g`'s input gradient runs on the microkernel (see [`DirectWeights`]).
pub fn direct_input_grad(g: &ConvGeometry) -> bool {
    g.input_grad_geometry().is_some() && !direct_stem::eligible(g)
}

/// Whether `g` runs the few-channel path of `direct_stem.rs`: it reads NCHW only, and its input gradient
/// goes through im2col.
pub fn few_channels(g: &ConvGeometry) -> bool {
    direct_stem::eligible(g)
}

/// The workspace of every pass of [`ConvAlgo::Direct`](super::ConvAlgo::Direct) over `g` (at the batch
/// `g` holds), except an input gradient that goes through im2col (`direct_input_grad` is false).
pub(super) fn workspace(g: &ConvGeometry) -> WorkspaceSize {
    if direct_stem::eligible(g) {
        return direct_stem::workspace(g);
    }
    let lens = |g: &ConvGeometry| {
        blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo(g))
            + blocked::image_len(g.out_channels, [g.h.output, g.w.output], Halo::default())
    };
    let chunk = weight_grad_chunk(lens(g)).min(g.batch.max(1));
    let weight_grad = WorkspaceSize {
        partials: packed_len(g),
        ..WorkspaceSize::regions(chunk * lens(g))
    };
    let forward = WorkspaceSize::regions(lens(g));
    let input_grad = g
        .input_grad_geometry()
        .map(|back| WorkspaceSize::regions(lens(&back)))
        .unwrap_or_default();
    forward.max(weight_grad).max(input_grad)
}

/// Where a direct convolution reads its input images: `images` in `layout`, `channels` channels on an
/// `[h, w]` map, to become blocked images with `halo`.
#[derive(Clone, Copy)]
struct Source<'a> {
    images: Images<'a>,
    layout: Layout,
    channels: usize,
    map: [usize; 2],
    halo: Halo,
}

impl<'a> Source<'a> {
    /// The source of `packed`'s convolution: its input images `images` in `layout`.
    fn of(packed: &PackedConv, images: Images<'a>, layout: Layout) -> Self {
        let g = &packed.geometry;
        Source {
            images,
            layout,
            channels: g.in_channels,
            map: [g.h.input, g.w.input],
            halo: halo(g),
        }
    }

    /// Writes image `n` into `out` as a blocked image with the halo.
    fn write_blocked(&self, n: usize, out: &mut [f32]) {
        let image = self.images.get(n);
        match self.layout {
            Layout::Nchw => blocked::from_nchw(image, self.channels, self.map, self.halo, out),
            Layout::Blocked => blocked::add_halo(image, self.channels, self.map, self.halo, out),
        }
    }

    /// Whether the images already are blocked images with the halo (a blocked layout, and no halo to
    /// add), so they can be read where they lie.
    fn readable_in_place(&self) -> bool {
        self.layout == Layout::Blocked && self.halo == Halo::default()
    }

    /// The images as they lie, when they already are blocked images with the halo.
    fn in_place(&self) -> Option<InPlace<'a>> {
        self.readable_in_place().then(|| {
            let (data, first, stride) = self.images.storage();
            InPlace { data, first, stride }
        })
    }

    /// Image `n` as a blocked image with the halo: itself when it already is one, else written into
    /// `scratch`.
    fn blocked<'r>(&self, n: usize, scratch: &'r mut [f32]) -> &'r [f32]
    where
        'a: 'r,
    {
        if self.readable_in_place() {
            return self.images.get(n);
        }
        self.write_blocked(n, scratch);
        scratch
    }
}

/// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) on images in either layout: an NCHW input is
/// reordered into the blocked layout in `ws` (a blocked one is read in place, or copied there when the
/// convolution pads), and a blocked output is written in place (an NCHW one reordered from `ws`).
#[allow(clippy::too_many_arguments)]
pub fn forward_images(
    weights: &DirectWeights,
    x: Images<'_>,
    x_layout: Layout,
    relu: bool,
    y: &mut ImagesMut<'_>,
    y_layout: Layout,
    ws: &mut Workspace,
    isa: Isa,
) {
    let packed = match &weights.0 {
        Packed::Blocked { forward, .. } => forward,
        Packed::FewChannels(stem) => {
            assert_eq!(x_layout, Layout::Nchw, "the few-channel path reads NCHW");
            return stem.forward_images(x, relu, y, y_layout, ws, isa);
        }
    };
    let source = Source::of(packed, x, x_layout);
    let out = Output {
        layout: y_layout,
        add: false,
        relu,
    };
    run_images(packed, source, out, y, ws, isa);
}

/// Adds the input gradient of output gradients `dy` (in `dy_layout`) into `dx` (in `dx_layout`), with
/// the flipped weights of a stride-1 convolution. Panics if `weights` has none
/// ([`DirectWeights::has_direct_input_grad`]).
pub fn add_input_grad_images(
    weights: &DirectWeights,
    dy: Images<'_>,
    dy_layout: Layout,
    dx: &mut ImagesMut<'_>,
    dx_layout: Layout,
    ws: &mut Workspace,
    isa: Isa,
) {
    let Packed::Blocked {
        input_grad: Some(back), ..
    } = &weights.0
    else {
        panic!("the direct input gradient needs a stride-1 convolution of at least 16 input channels");
    };
    let source = Source::of(back, dy, dy_layout);
    let out = Output {
        layout: dx_layout,
        add: true,
        relu: false,
    };
    run_images(back, source, out, dx, ws, isa);
}

/// How [`run_images`] stores each image's result.
#[derive(Clone, Copy)]
struct Output {
    layout: Layout,
    /// Add to the output instead of overwriting it.
    add: bool,
    relu: bool,
}

/// Convolves every image of `source` with `packed` into the same image of `out`: images in static
/// parts across the pool when they fill it, else one at a time with each image's tiles across the
/// pool. Each part's blocked scratch is its region of `ws`.
fn run_images(
    packed: &PackedConv,
    source: Source<'_>,
    output: Output,
    out: &mut ImagesMut<'_>,
    ws: &mut Workspace,
    isa: Isa,
) {
    let (in_len, out_len) = packed.image_lens();
    let region_len = run_images_region(packed, output.layout);
    let g = &packed.geometry;
    let map_out = [g.h.output, g.w.output];
    let mut images: Vec<&mut [f32]> = out.iter_mut().map(|(_, img)| img).collect();
    for_each_part(
        &mut images,
        1,
        ws.regions(region_len),
        region_len,
        |first, run, region, threads| {
            let (xb, yb) = region.split_at_mut(in_len);
            for (i, img) in run.iter_mut().enumerate() {
                let x_img = source.blocked(first + i, xb);
                match output.layout {
                    Layout::Blocked => forward_image(packed, x_img, img, output.add, output.relu, isa, threads),
                    Layout::Nchw => {
                        let yb = &mut yb[..out_len];
                        forward_image(packed, x_img, yb, false, output.relu, isa, threads);
                        if output.add {
                            blocked::add_to_nchw(yb, g.out_channels, map_out, img);
                        } else {
                            blocked::to_nchw(yb, g.out_channels, map_out, img);
                        }
                    }
                }
            }
        },
    );
}

/// The region [`run_images`] takes per part: a blocked input image and, for an NCHW output, a
/// blocked output image.
fn run_images_region(packed: &PackedConv, out_layout: Layout) -> usize {
    let (in_len, out_len) = packed.image_lens();
    in_len
        + match out_layout {
            Layout::Nchw => out_len,
            Layout::Blocked => 0,
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
    let packed = match &weights.0 {
        Packed::Blocked { forward, .. } => forward,
        Packed::FewChannels(stem) => {
            assert_eq!(x_layout, Layout::Nchw, "the few-channel path reads NCHW");
            return stem.add_weight_grad_images(x, dy, dy_layout, dw, ws, isa);
        }
    };
    let g = &packed.geometry;
    let source = Source::of(packed, x, x_layout);
    let gradient = Source {
        images: dy,
        layout: dy_layout,
        channels: g.out_channels,
        map: [g.h.output, g.w.output],
        halo: Halo::default(),
    };
    let (in_len, out_len) = packed.image_lens();
    let batch = x.count();
    let chunk = packed.weight_grad_chunk().min(batch.max(1));
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
struct InPlace<'a> {
    data: &'a [f32],
    first: usize,
    stride: usize,
}

impl<'a> InPlace<'a> {
    /// Images of `len` values one after another in `data`, from image `first`.
    fn dense(data: &'a [f32], first: usize, len: usize) -> InPlace<'a> {
        InPlace {
            data,
            first: first * len,
            stride: len,
        }
    }

    /// The same images from image `n` on.
    fn skip_images(self, n: usize) -> InPlace<'a> {
        InPlace {
            first: self.image(n),
            ..self
        }
    }

    /// Where image `n` starts in `data`.
    fn image(&self, n: usize) -> usize {
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
fn add_image_sums(images: impl Iterator<Item = [f64; LANES]>, db_block: &mut [f32]) {
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

/// Adds the input gradient of a convolution whose direct weights have no input-gradient packing (a
/// strided one, or a few-channel one) into `dx`, through im2col + GEMM one image at a time: each
/// image's `dy` reordered to NCHW (from `dy_layout`), its NCHW input gradient added into `dx` (in
/// `dx_layout`).
#[allow(clippy::too_many_arguments)]
pub fn add_input_grad_via_im2col(
    g: &ConvGeometry,
    w: &[f32],
    dy: Images<'_>,
    dy_layout: Layout,
    dx: &mut ImagesMut<'_>,
    dx_layout: Layout,
    ws: &mut Workspace,
) {
    let one = ConvGeometry { batch: 1, ..*g };
    let (in_len, out_len) = (g.input_image_len(), g.output_image_len());
    let (map_in, map_out) = ([g.h.input, g.w.input], [g.h.output, g.w.output]);
    let (mut dy_image, mut dx_image) = (vec![0.0; out_len], vec![0.0; in_len]);
    for n in 0..dy.count() {
        let dy_nchw: &[f32] = match dy_layout {
            Layout::Nchw => dy.get(n),
            Layout::Blocked => {
                blocked::to_nchw(dy.get(n), g.out_channels, map_out, &mut dy_image);
                &dy_image
            }
        };
        dx_image.fill(0.0);
        let mut dx_one = ImagesMut::dense(&mut dx_image, 1, in_len);
        let algo = super::ConvAlgo::Im2colGemm;
        super::backward_input_images(&one, algo, w, Images::dense(dy_nchw, 1, out_len), &mut dx_one, ws);
        let out = dx.get_mut(n);
        match dx_layout {
            Layout::Nchw => out.iter_mut().zip(&dx_image).for_each(|(o, v)| *o += v),
            Layout::Blocked => blocked::add_nchw_to_blocked(&dx_image, g.in_channels, map_in, out),
        }
    }
}
