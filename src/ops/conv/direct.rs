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
//! with the weights flipped and transposed ([`PackedConv::input_grad`]). The executor does not run
//! either yet (the compute-core issue wires them in).

use rayon::prelude::*;

use super::ConvGeometry;
use crate::blocked::{self, Halo};
use crate::microkernel::{self, Epilogue, Isa, LANES, Tile, TileShape};

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
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        let taps = g.h.kernel * g.w.kernel;
        let block_stride = microkernel::block_stride(in_blocks * taps * LANES * LANES);
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
        let mut packed = PackedConv {
            geometry: *g,
            block_stride,
            weights: vec![0.0; out_blocks * block_stride],
            bias: vec![0.0; out_blocks * LANES],
            runs,
        };
        packed.repack(w, b);
        packed
    }

    /// Packs new values of the same weights (after an optimizer step) into the existing buffers.
    pub fn repack(&mut self, w: &[f32], b: Option<&[f32]>) {
        let g = &self.geometry;
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let taps = g.h.kernel * g.w.kernel;
        assert_eq!(w.len(), outputs * inputs * taps, "conv weights [out, in, kh, kw]");
        let stride = self.block_stride;
        self.weights.par_chunks_mut(stride).enumerate().for_each(|(ob, block)| {
            for (i, v) in block.iter_mut().enumerate() {
                // i = ((icb · taps + tap) · 16 + ic) · 16 + oc, with zeros past the real channels
                // and in the stride's padding.
                let (oc, rest) = (i % LANES, i / LANES);
                let (ic, rest) = (rest % LANES, rest / LANES);
                let (tap, icb) = (rest % taps, rest / taps);
                let (o, c) = (ob * LANES + oc, icb * LANES + ic);
                *v = if o < outputs && c < inputs {
                    w[(o * inputs + c) * taps + tap]
                } else {
                    0.0
                };
            }
        });
        self.bias.fill(0.0);
        if let Some(b) = b {
            assert_eq!(b.len(), outputs, "conv bias [out]");
            self.bias[..outputs].copy_from_slice(b);
        }
    }

    /// The convolution that computes `g`'s input gradient, packed: over the output gradient (as its
    /// input, with a halo of `(K - 1)·dilation - pad` per side), `w'[c][o][ky][kx] = w[o][c][K-1-ky][K-1-kx]`,
    /// no bias. `None` when `g` has a stride above 1 or more padding than its kernel reaches (those need a
    /// transposed convolution, not built yet).
    pub fn input_grad(g: &ConvGeometry, w: &[f32]) -> Option<PackedConv> {
        let back = g.input_grad_geometry()?;
        let (kh, kw) = (g.h.kernel, g.w.kernel);
        let (inputs, outputs) = (g.in_channels, g.out_channels);
        let mut flipped = vec![0.0; w.len()];
        for c in 0..inputs {
            for o in 0..outputs {
                for ky in 0..kh {
                    for kx in 0..kw {
                        flipped[((c * outputs + o) * kh + ky) * kw + kx] =
                            w[((o * inputs + c) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)];
                    }
                }
            }
        }
        Some(PackedConv::new(&back, &flipped, None))
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
        let g = &self.geometry;
        let halo = halo(g);
        let in_len = blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo);
        let (oh, ow) = (g.h.output, g.w.output);
        let plane = oh * ow * LANES;
        let (in_blocks, out_blocks) = (blocked::blocks(g.in_channels), blocked::blocks(g.out_channels));
        let out_len = out_blocks * plane;
        assert_eq!(x.len(), g.batch * in_len, "blocked input with halo");
        assert_eq!(dy.len(), g.batch * out_len, "blocked output gradient");
        assert_eq!(dw.len(), self.weights.len(), "weight gradient in the packed layout");
        let [hp, wp] = halo.padded([g.h.input, g.w.input]);
        let taps = g.h.kernel * g.w.kernel;
        // Tiles of up to 3 output blocks × 8 input channels; fewer blocks when that is what gives every
        // thread a group of its own.
        let threads = crate::parallel::threads();
        let blocks = (1..=3.min(isa.preferred_tile().blocks))
            .rev()
            .find(|&b| out_blocks.div_ceil(b) >= threads)
            .unwrap_or(1);
        let pixels = 8;
        // Images per chunk: as many as keep a chunk's input and output gradient within ~2 MB.
        let chunk = (512 * 1024 / (in_len + out_len).max(1)).clamp(1, g.batch.max(1));
        let stride = self.block_stride;
        for first in (0..g.batch).step_by(chunk) {
            let images = first..(first + chunk).min(g.batch);
            // One task per group of output blocks: each owns its blocks of `dw`.
            dw.par_chunks_mut(blocks * stride)
                .enumerate()
                .for_each(|(grp, dw_group)| {
                    let first_block = grp * blocks;
                    let shape_blocks = dw_group.len().div_ceil(stride);
                    let mut runs = Vec::with_capacity(images.len() * oh);
                    for icb in 0..in_blocks {
                        for tap in 0..taps {
                            let (ky, kx) = (tap / g.w.kernel, tap % g.w.kernel);
                            runs.clear();
                            for n in images.clone() {
                                for oy in 0..oh {
                                    let dy_at = n * out_len + first_block * plane + oy * ow * LANES;
                                    let y_in = oy * g.h.stride + ky * g.h.dilation;
                                    let x_at = n * in_len + ((icb * hp + y_in) * wp + kx * g.w.dilation) * LANES;
                                    runs.push((dy_at, x_at));
                                }
                            }
                            for ic in (0..LANES).step_by(pixels) {
                                let tile = Tile {
                                    shape: TileShape {
                                        blocks: shape_blocks,
                                        pixels: pixels.min(LANES - ic),
                                    },
                                    runs: &runs,
                                    depth: ow,
                                    w_block_stride: plane,
                                    x_pixel_stride: 1,
                                    x_depth_stride: g.w.stride * LANES,
                                    c_offset: ((icb * taps + tap) * LANES + ic) * LANES,
                                    c_block_stride: stride,
                                    epilogue: Epilogue {
                                        accumulate: true,
                                        bias: None,
                                        relu: false,
                                    },
                                };
                                microkernel::run(isa, &tile, dy, &x[ic..], dw_group);
                            }
                        }
                    }
                });
        }
    }

    /// `packed` (in these weights' layout) back in PyTorch's `[out, in, kh, kw]`.
    pub fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let g = &self.geometry;
        let taps = g.h.kernel * g.w.kernel;
        let mut w = vec![0.0; g.out_channels * g.in_channels * taps];
        for (i, v) in w.iter_mut().enumerate() {
            let (tap, rest) = (i % taps, i / taps);
            let (c, o) = (rest % g.in_channels, rest / g.in_channels);
            let (ob, oc, icb, ic) = (o / LANES, o % LANES, c / LANES, c % LANES);
            *v = packed[ob * self.block_stride + ((icb * taps + tap) * LANES + ic) * LANES + oc];
        }
        w
    }
}

/// The zero halo the input needs: the convolution's padding.
pub fn halo(g: &ConvGeometry) -> Halo {
    Halo([g.h.pad_lo, g.h.pad_hi, g.w.pad_lo, g.w.pad_hi])
}

/// `y = conv(x) + bias` (then `max(·, 0)` with `relu`) for a batch: `x` holds blocked images with the
/// [`halo`] of `packed`'s convolution, `y` blocked images without halo, both one after another. With
/// `accumulate`, the result is added to `y` instead (before the ReLU).
pub fn forward_blocked(packed: &PackedConv, x: &[f32], y: &mut [f32], accumulate: bool, relu: bool, isa: Isa) {
    let g = &packed.geometry;
    let in_len = blocked::image_len(g.in_channels, [g.h.input, g.w.input], halo(g));
    let (oh, ow) = (g.h.output, g.w.output);
    let plane = oh * ow * LANES;
    let out_len = blocked::blocks(g.out_channels) * plane;
    assert_eq!(x.len(), g.batch * in_len, "blocked input with halo");
    assert_eq!(y.len(), g.batch * out_len, "blocked output");
    let [_, wp] = halo(g).padded([g.h.input, g.w.input]);
    let TileShape { blocks, pixels } = isa.preferred_tile();
    // A 1×1, stride-1, unpadded convolution reads pixel `i` of the output at input pixel `i`: the whole
    // map is one row, so a 3×3 map fills a 6-pixel tile and a 3-pixel one instead of three 3-pixel ones.
    let (rows, cols) = if g.is_pointwise() { (1, oh * ow) } else { (oh, ow) };
    y.par_chunks_mut(out_len)
        .zip(x.par_chunks(in_len))
        .for_each(|(y_img, x_img)| {
            // One task per group of `blocks` output blocks: its tiles write only its own planes.
            y_img
                .par_chunks_mut(blocks * plane)
                .enumerate()
                .for_each(|(group, y_group)| {
                    let first_block = group * blocks;
                    let shape_blocks = y_group.len() / plane;
                    let weights = &packed.weights[first_block * packed.block_stride..];
                    let bias = &packed.bias[first_block * LANES..];
                    for oy in 0..rows {
                        for ox in (0..cols).step_by(pixels) {
                            let tile = Tile {
                                shape: TileShape {
                                    blocks: shape_blocks,
                                    pixels: pixels.min(cols - ox),
                                },
                                runs: &packed.runs,
                                depth: LANES,
                                w_block_stride: packed.block_stride,
                                x_pixel_stride: g.w.stride * LANES,
                                x_depth_stride: 1,
                                c_offset: (oy * cols + ox) * LANES,
                                c_block_stride: plane,
                                epilogue: Epilogue {
                                    accumulate,
                                    bias: Some(bias),
                                    relu,
                                },
                            };
                            let x_tile = &x_img[(oy * g.h.stride * wp + ox * g.w.stride) * LANES..];
                            microkernel::run(isa, &tile, weights, x_tile, y_group);
                        }
                    }
                });
        });
}
